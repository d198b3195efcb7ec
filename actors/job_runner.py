"""Ray jobs for the loop controller: the one place it reaches Ray's job API.

:class:`RayJobRunner` wraps ``JobSubmissionClient``; the controller takes any object with
the same two methods (:class:`JobRunner`), so its logic is tested with a fake. The client is
made on first use, inside the process that submits (an actor restarted elsewhere makes its
own), which also keeps the runner picklable as an actor argument.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Protocol

from schemas.loop import JobSettings


class JobRunner(Protocol):
    def status(self, submission_id: str) -> str | None:
        """The job's status (``PENDING`` ... ``SUCCEEDED``), None if never submitted."""

    def submit(self, submission_id: str, entrypoint: str) -> None:
        """Submit once; a submission id that already exists is not an error."""

    def stop(self, submission_id: str) -> None:
        """Stop a job (one past ``jobs.timeout_s``); a finished one is left as it is."""


class RayJobRunner:
    """Submits to the Ray cluster at ``settings.address`` (see :func:`job_address`)."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "_client": None}

    def _jobs(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        if self._client is None:
            self._client = JobSubmissionClient(job_address(self.settings.address))
        return self._client

    def status(self, submission_id: str) -> str | None:
        try:
            return str(self._jobs().get_job_status(submission_id).value)
        except RuntimeError:  # the job API's answer for an unknown submission id
            return None

    def submit(self, submission_id: str, entrypoint: str) -> None:
        runtime_env: dict[str, Any] = {"env_vars": dict(self.settings.env_vars)}
        if self.settings.working_dir:
            runtime_env["working_dir"] = self.settings.working_dir
        try:
            self._jobs().submit_job(
                entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env
            )
        except RuntimeError as e:
            if "already exists" not in str(e):
                raise

    def stop(self, submission_id: str) -> None:
        with contextlib.suppress(RuntimeError):  # already finished, or never submitted
            self._jobs().stop_job(submission_id)


def job_address(configured: str | None) -> str:
    """The job API address: configured, else RAY_ADDRESS if it is HTTP, else the dashboard of
    the Ray cluster this process is connected to."""
    if configured:
        return configured
    env = os.environ.get("RAY_ADDRESS", "")
    if env.startswith("http"):
        return env
    url = _connected_dashboard()
    if url:
        return url if url.startswith("http") else f"http://{url}"
    return "http://127.0.0.1:8265"


def _connected_dashboard() -> str | None:
    """The dashboard address the cluster's GCS holds. Asked of the GCS, not of this process's
    node: inside an actor there is no local node record, and guessing port 8265 sent jobs to
    another cluster whenever a second Ray on the machine held that port."""
    import ray
    from ray._private import ray_constants
    from ray.experimental import internal_kv

    if not ray.is_initialized():
        return None
    raw = internal_kv._internal_kv_get(
        ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD
    )
    return raw.decode() if raw else None
