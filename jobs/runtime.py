"""What every job entrypoint shares: connecting to Ray, progress lines, argument parsing."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# Quiet, private defaults for Ray processes this code starts; a user's settings win.
_RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
    "TOKENIZERS_PARALLELISM": "true",
}


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """Connect to ``address``, else ``RAY_ADDRESS``, else start a private local Ray.

    ``address="local"`` (the fallback) never joins a stale cluster that a previous
    ``ray start`` left recorded on this machine. The dashboard stays on loopback.
    """
    import ray

    if ray.is_initialized():
        return
    for key, value in _RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        # On loopback only: Ray Train and Serve use the state API the dashboard serves.
        kwargs.setdefault("include_dashboard", True)
        kwargs.setdefault("dashboard_host", "127.0.0.1")
    kwargs.setdefault("log_to_driver", True)
    ray.init(address=address, **kwargs)


def free_port() -> int:
    """A free TCP port on loopback (for local Serve, test servers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Progress:
    """Progress lines with elapsed time, for the demo and job logs (stdout, flushed)."""

    def __init__(self, prefix: str, stream: Any = None) -> None:
        self.prefix = prefix
        self.start = time.perf_counter()
        self.stream = stream or sys.stdout
        self.timings: dict[str, float] = {}

    def say(self, message: str) -> None:
        elapsed = time.perf_counter() - self.start
        print(f"[{self.prefix} {elapsed:6.1f}s] {message}", file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        """Announce a stage, time it, and remember the time under ``name``."""
        self.say(message)
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)
        self.say(f"{name} done in {self.timings[name]:.1f}s")


def config_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--config FILE`` and repeated ``--set key=value`` for ``python -m jobs.X``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML recipe (jobs/configs/*.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set pack.block_size=256 (repeatable)",
    )
    parser.add_argument("--result", help="also write the outcome as JSON here (path or s3://)")
    return parser.parse_args(argv)
