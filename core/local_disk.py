"""Durable writes on local disk: what a power loss cannot half-do.

A file is written under a temporary name, fsync'd, then renamed (or hard-linked, for a
create that must not replace) into place, and the folder is fsync'd too: the rename is
itself a change to the folder, lost with it unless the folder reaches the disk.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in ``path`` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a part."""
    tmp = _temp_beside(path, data)
    try:
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def create_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` only if nothing is there (a hard link fails if the name exists).

    As on S3 (``core.storage.create_exclusive``), finding exactly ``data`` there is a
    retry's own earlier create: True.
    """
    tmp = _temp_beside(path, data)
    try:
        os.link(tmp, path)
        fsync_dir(path.parent)
        return True
    except FileExistsError:
        return path.read_bytes() == data
    finally:
        tmp.unlink(missing_ok=True)
