"""Fault injection for chaos tests: crash a process once at a named point.

``FLYWHEEL_FAULTS`` holds comma-separated ``point=mode:marker_path`` entries. The first time
:func:`maybe_fail` reaches ``point`` it creates the marker file (so a restarted process
proceeds) and then either raises :class:`InjectedFault` (``mode=raise``) or kills its own
process with ``os._exit`` (``mode=exit``), which is what a worker crash looks like to Ray.
Nothing happens when the variable is unset, which is always the case outside tests.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "FLYWHEEL_FAULTS"


class InjectedFault(RuntimeError):
    """Raised at a fault point configured with ``mode=raise``."""


def parse(spec: str | None) -> dict[str, tuple[str, str]]:
    """``"tokenize=exit:/tmp/m"`` -> ``{"tokenize": ("exit", "/tmp/m")}``."""
    faults = {}
    for item in filter(None, (spec or "").split(",")):
        point, _, rest = item.partition("=")
        mode, _, marker = rest.partition(":")
        if mode not in ("raise", "exit") or not marker:
            raise ValueError(f"bad {ENV} entry {item!r}: expected point=raise|exit:/marker/path")
        faults[point.strip()] = (mode, marker)
    return faults


def maybe_fail(point: str, spec: str | None = None) -> None:
    """Fail once at ``point`` if configured (``spec`` defaults to the environment)."""
    fault = parse(spec if spec is not None else os.environ.get(ENV)).get(point)
    if fault is None:
        return
    mode, marker = fault
    try:
        Path(marker).touch(exist_ok=False)
    except FileExistsError:
        return
    if mode == "exit":
        os._exit(17)
    raise InjectedFault(f"injected fault at {point}")
