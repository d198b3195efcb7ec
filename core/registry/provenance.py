"""Where an artifact came from: code version and package versions, for lineage."""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path

TRACKED_PACKAGES = (
    "ray",
    "torch",
    "deepspeed",
    "transformers",
    "tokenizers",
    "peft",
    "pyarrow",
    "flywheel",
)


@functools.cache
def code_version() -> str:
    """Git commit of the code (``+dirty`` with uncommitted changes); ``FLYWHEEL_CODE_VERSION``
    wins, since a Ray job's working dir is a copy without ``.git``."""
    if os.environ.get("FLYWHEEL_CODE_VERSION"):
        return os.environ["FLYWHEEL_CODE_VERSION"]
    root = Path(__file__).resolve().parents[2]
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _git(root: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=10
    )
    return out.stdout.strip()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
