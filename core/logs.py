"""One logging set-up for every Flywheel process: the CLI, the demo, the job entrypoints.

Flywheel's own loggers (``logging.getLogger(__name__)`` in its packages) print one concise
line per message to the terminal; every logger, other libraries' included, also writes to
``<home>/logs/flywheel.log`` when there is a local home. Other libraries reach the terminal
only with errors: their chatter is for the file. Progress bars (:func:`progress_bar`) share
the terminal with the log lines without tearing them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

# Top-level packages whose loggers are Flywheel's own.
FLYWHEEL_PACKAGES = frozenset(
    {"actors", "bench", "cli", "core", "demo", "jobs", "report", "schemas", "serve_apps"}
)
LOG_FILE = "flywheel.log"
_PER_REQUEST_LOGGERS = ("httpx", "httpcore", "openai", "urllib3")
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"
_state: dict[str, Any] = {"bars": None, "handlers": []}


def logs_dir(home: str | Path) -> Path:
    """Where a home keeps its log files (Flywheel's, Ray's, Serve's)."""
    return Path(home) / "logs"


def local_home(home: str | Path | None = None) -> Path | None:
    """``home``, else ``FLYWHEEL_HOME``, when it is a local folder (not ``s3://``)."""
    home = home or os.environ.get("FLYWHEEL_HOME")
    if not home or "://" in str(home):
        return None
    return Path(home).resolve()


def setup_logging(
    home: str | Path | None = None, level: str = "INFO", bars: bool | None = None
) -> Path | None:
    """Configure the root logger for this process; returns the log file (None: no local home).

    Calling it again replaces the handlers it installed, so a CLI and a job it runs in the
    same process do not print twice. ``bars``: draw progress bars (None: only when stderr
    is a terminal, so a job's log file gets lines, not carriage returns).
    """
    root = logging.getLogger()
    for handler in _state["handlers"]:
        root.removeHandler(handler)
        handler.close()
    console = _ConsoleHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    threshold = logging.getLevelName(level.upper())
    console.addFilter(_terminal_filter(threshold))
    handlers: list[logging.Handler] = [console]
    path = None
    if (folder := local_home(home)) is not None:
        path = logs_dir(folder) / LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(path, encoding="utf-8")
        file.setFormatter(logging.Formatter(_FILE_FORMAT))
        file.setLevel(min(logging.INFO, threshold))  # Ray Data's logger passes on DEBUG
        handlers.append(file)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(min(logging.INFO, threshold))
    for name in _PER_REQUEST_LOGGERS:  # a line per HTTP request would bury the file
        logging.getLogger(name).setLevel(logging.WARNING)
    _state.update(bars=bars, handlers=handlers)
    logging.captureWarnings(True)  # library warnings go to the file, not the terminal
    return path


def adopt_logger(name: str) -> None:
    """Send a library logger that installed its own terminal handler (Ray's do, when they
    are imported) through ours instead: its lines go to the file, its errors to the terminal.
    Handlers writing to files of its own are kept."""
    logger = logging.getLogger(name)
    for handler in logger.handlers[:]:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            logger.removeHandler(handler)
    logger.propagate = True


def bars_enabled() -> bool:
    bars = _state["bars"]
    return terminal().isatty() if bars is None else bars


def terminal() -> Any:
    """The stream Flywheel's lines and bars go to: ``sys.stderr`` as it is now (a test or a
    CLI runner may swap it), or the one it stood for inside :func:`library_output_to_log`."""
    stream = sys.stderr
    while isinstance(stream, _LogWriter):
        stream = stream.terminal
    return stream


def progress_bar(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
) -> tqdm:
    """A progress bar on the terminal (stderr), left in place when done; a no-op bar when
    bars are off (see :func:`setup_logging`) or ``enabled`` is False."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=terminal(),
        disable=not (enabled and bars_enabled()),
        dynamic_ncols=True,
        mininterval=0.5,
        leave=True,
    )


@contextmanager
def library_output_to_log(name: str) -> Iterator[None]:
    """What libraries print straight to stdout or stderr inside the block (their progress
    bars, banners, Ray's warnings pushed to the driver, handlers made meanwhile) goes to the
    log file as lines of logger ``name`` instead of the terminal; of a progress bar only its
    last state is kept. Flywheel's lines and bars still reach the terminal."""
    with (
        contextlib.redirect_stdout(_LogWriter(name, sys.stdout)),
        contextlib.redirect_stderr(_LogWriter(name, sys.stderr)),
    ):
        yield


class _LogWriter(io.TextIOBase):
    """A text stream whose complete lines become log records (never closed: a handler made
    while it stood in for stdout keeps writing to it)."""

    def __init__(self, name: str, terminal: Any) -> None:
        self.logger, self.terminal, self.pending = logging.getLogger(name), terminal, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line := line.rsplit("\r", 1)[-1].strip():  # a bar's redraws: the last one
                self.logger.info(line)
        return len(text)


class _ConsoleHandler(logging.Handler):
    """Writes to :func:`terminal` when a line is logged, through tqdm so an open progress
    bar is redrawn below the line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=terminal())
        except Exception:  # logging must never raise into the caller (as StreamHandler)
            self.handleError(record)


def _terminal_filter(level: int) -> Callable[[logging.LogRecord], bool]:
    def ours_or_error(record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] in FLYWHEEL_PACKAGES:
            return record.levelno >= level
        return record.levelno >= logging.ERROR

    return ours_or_error
