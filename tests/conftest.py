"""Shared fixtures: one local Ray per test session, a real S3-compatible server, stores.

Tests never assume a server is running: Ray and the S3 server are started here and stopped
at the end of the session. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

# Set before Ray or torch start so every worker process inherits them.
_REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_REPO / ".flywheel" / "torch_extensions"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from hypothesis import settings as hypothesis_settings  # noqa: E402

from schemas.storage import StorageSettings  # noqa: E402

# Property tests draw a fixed example set, so CI and laptops test the same inputs.
hypothesis_settings.register_profile("flywheel", derandomize=True)
hypothesis_settings.load_profile("flywheel")
from tests.s3server import S3Server, start_moto_server, start_s3_server  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """A private local Ray with 2 CPUs shared by every test that needs one."""
    import ray

    temp = Path(tempfile.mkdtemp(prefix="fwray-", dir="/tmp"))
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,  # Ray Train and Serve use the state API it serves
        dashboard_host="127.0.0.1",
        _temp_dir=str(temp),
    )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    root = tmp_path_factory.mktemp("s3root")
    server = start_s3_server(root / "data", root / "rclone.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory) -> S3Server:
    """An S3 server that honours conditional writes (for the registry's compare-and-swap)."""
    root = tmp_path_factory.mktemp("moto")
    server = start_moto_server(root, root / "moto.log")
    yield server
    server.stop()


@dataclass
class Store:
    """Where a test keeps its objects: a local folder or a fresh S3 bucket."""

    kind: str
    base: str
    settings: StorageSettings

    def uri(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])


def make_bucket(server: S3Server) -> str:
    """Create a fresh bucket through the S3 API (boto3, path-style, classic checksums)."""
    import boto3
    from botocore.config import Config

    name = f"t-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.settings.s3.access_key_id,
        aws_secret_access_key=server.settings.s3.secret_access_key,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path) -> Store:
    """Each test using this runs twice: on local disk and on the S3 server."""
    if request.param == "local":
        return Store("local", str(tmp_path / "store"), StorageSettings())
    server = request.getfixturevalue("s3_server")
    return Store("s3", f"s3://{make_bucket(server)}/store", server.settings)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def cas_store(request, tmp_path) -> Store:
    """Like ``store``, with an S3 server that honours conditional writes."""
    if request.param == "local":
        return Store("local", str(tmp_path / "store"), StorageSettings())
    server = request.getfixturevalue("moto_server")
    return Store("s3", f"s3://{make_bucket(server)}/store", server.settings)


@pytest.fixture
def s3_store(s3_server) -> Store:
    return Store("s3", f"s3://{make_bucket(s3_server)}/store", s3_server.settings)
