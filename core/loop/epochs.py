"""Fencing for the loop controller: each one claims an epoch, only the newest may write.

An epoch is a file ``<folder>/<n>.json`` created exclusively, one above the newest, so two
controllers starting at once get different numbers. A controller checks that its epoch is
still the newest before each write of its state: one that kept running after its successor
started (a zombie: partitioned, or paused past its actor's restart) is :class:`Fenced`
instead of overwriting the newer state.
"""

from __future__ import annotations

import json
import time

from core import storage
from core.storage import Location


class Fenced(RuntimeError):
    """A newer controller of the same loop has started: this one must stop writing."""


class Epochs:
    def __init__(self, folder: Location) -> None:
        self.folder = folder

    def claim(self) -> int:
        """A new epoch, newer than every one claimed before."""
        while True:
            n = self.newest() + 1
            body = json.dumps({"started_at": time.time()}).encode()
            if storage.create_exclusive(self.folder.join(f"{n:08d}.json"), body):
                return n

    def newest(self) -> int:
        files = storage.list_files(self.folder, "*.json")
        return int(files[-1].relpath.split(".")[0]) if files else 0

    def check(self, epoch: int) -> None:
        """Raises :class:`Fenced` unless ``epoch`` is the newest."""
        newest = self.newest()
        if newest != epoch:
            raise Fenced(f"controller epoch {epoch} is fenced: epoch {newest} has started")
