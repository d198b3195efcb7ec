"""What every job entrypoint shares: connecting to Ray, progress lines and bars, arguments."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.logs import adopt_logger, local_home, logs_dir, progress_bar, setup_logging

# Quiet, private defaults for Ray processes this code starts; a user's settings win.
_RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
    "TOKENIZERS_PARALLELISM": "true",
}
# Ray keeps its sockets under its temp folder, and a Unix socket path has at most 107 bytes:
# the session folder and socket names take about 64 of them.
_MAX_RAY_TEMP_CHARS = 40
# Driver-side loggers of Ray's libraries that install their own terminal handler on import.
_RAY_LOGGERS = ("ray", "ray.data", "ray.serve")

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """Connect to ``address``, else ``RAY_ADDRESS``, else start a private local Ray.

    ``address="local"`` (the fallback) never joins a stale cluster that a previous
    ``ray start`` left recorded on this machine. The dashboard stays on loopback. Workers'
    output stays in Ray's log files (``log_to_driver=False``): a local Ray started here keeps
    them under the home (:func:`ray_logs_dir`), the driver's Ray loggers go to ours.
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
        if (temp := _ray_temp_dir()) is not None:
            kwargs.setdefault("_temp_dir", str(temp))
    kwargs.setdefault("log_to_driver", False)
    adopt_ray_loggers()
    ray.init(address=address, **kwargs)
    _link_ray_logs()


def adopt_ray_loggers() -> None:
    """Route the driver-side loggers of the Ray libraries imported so far through
    :func:`core.logs.setup_logging` (the file; errors on the terminal). Call again after
    importing ``ray.data`` or ``ray.serve``: each installs its terminal handler on import."""
    for name in _RAY_LOGGERS:
        if name in sys.modules:
            adopt_logger(name)


def quiet_ray_data() -> None:
    """Ray Data without its per-operator progress bars and terminal logger: callers draw
    their own bar (:meth:`Progress.bar`), Ray Data's log lines go to the log file."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    adopt_ray_loggers()


def _ray_temp_dir() -> Path | None:
    """``<home>/ray`` for a local Ray when the home is local and its path short enough."""
    home = local_home()
    if home is None or len(str(home / "ray")) > _MAX_RAY_TEMP_CHARS:
        return None
    return home / "ray"


def ray_logs_dir() -> Path | None:
    """This node's Ray log folder (raylet, GCS, workers, Serve, jobs), when connected."""
    from ray._private import worker  # the public API does not say where the logs are

    node = getattr(worker, "_global_node", None)
    return Path(node.get_logs_dir_path()) if node is not None else None


def _link_ray_logs() -> None:
    """``<home>/logs/ray`` points at this session's Ray logs, wherever Ray keeps them."""
    home, target = local_home(), ray_logs_dir()
    if home is None or target is None:
        return
    link = logs_dir(home) / "ray"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)
    log.debug("Ray's logs: %s", target)


def free_port() -> int:
    """A free TCP port on loopback (for local Serve, test servers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Progress:
    """Progress lines with elapsed time, for the demo and job logs, and progress bars.

    Lines go to this module's logger (see :func:`core.logs.setup_logging`); with ``stream``
    they are written there instead and no bars are drawn (benchmarks pass ``os.devnull``).
    """

    def __init__(self, prefix: str, stream: Any = None) -> None:
        self.prefix = prefix
        self.start = time.perf_counter()
        self.stream = stream
        self.timings: dict[str, float] = {}

    def say(self, message: str) -> None:
        elapsed = time.perf_counter() - self.start
        line = f"[{self.prefix} {elapsed:6.1f}s] {message}"
        if self.stream is None:
            log.info(line)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        """Announce a stage, time it, and remember the time under ``name``."""
        self.say(message)
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)
        self.say(f"{name} done in {self.timings[name]:.1f}s")

    def bar(
        self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = ""
    ) -> Any:
        """A progress bar for ``total`` units of work (a tqdm; a silent one where bars are
        off); with ``iterable``, iterating the bar advances it."""
        desc = f"[{self.prefix}] {desc}".rstrip()
        return progress_bar(iterable, total=total, desc=desc, enabled=self.stream is None)


def config_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--config FILE`` and repeated ``--set key=value`` for ``python -m jobs.X``.

    Every job entrypoint starts here, so this is also where a job sets up its logging
    (:func:`core.logs.setup_logging`: lines to the job's log, a copy under a local home).
    """
    setup_logging()
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
