"""Object-storage settings: where S3 (or an S3-compatible server) is and how to sign requests."""

from __future__ import annotations

from pydantic import Field

from schemas.base import StrictModel


class S3Settings(StrictModel):
    """How to reach S3. Every field left empty falls back to the standard AWS environment
    variables (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_REGION`` /
    ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``). Prefer the environment (or a Kubernetes Secret) for keys."""

    endpoint_url: str | None = Field(
        None,
        description="S3 endpoint, e.g. http://127.0.0.1:9000 for an S3-compatible server; "
        "empty for AWS itself.",
    )
    region: str | None = Field(None, description="Region name; us-east-1 when unset anywhere.")
    access_key_id: str | None = Field(None, description="Access key id (prefer the env var).")
    secret_access_key: str | None = Field(None, description="Secret key (prefer the env var).")
    session_token: str | None = Field(None, description="Session token for temporary keys.")
    request_timeout_s: float = Field(30.0, gt=0, description="Per-request timeout, seconds.")


class StorageSettings(StrictModel):
    """Settings for every location a job reads or writes."""

    s3: S3Settings = Field(default_factory=S3Settings, description="S3 connection settings.")
