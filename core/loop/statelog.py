"""The loop controller's state as numbered versions: a true compare-and-set, and fencing.

Each write of the state creates ``<folder>/<n>.json`` exclusively (``If-None-Match: *`` on
S3, a hard link on local disk), one above the version the writer last read or wrote. Two
writers that start from the same version cannot both succeed: the loser gets
:class:`Fenced` and has written nothing. That is what a check-then-write cannot give: a
controller that checked it was still the newest and then stalled (a GC pause, a partition,
its actor restarted elsewhere) would still overwrite its successor's state once.

A controller *claims* the log when it starts by writing the state it read as a new version;
that version's number is its epoch. From then on, any older controller's next write finds
its slot taken and is fenced.

Only the newest ``keep`` versions are kept. A writer so far behind that its slot was
pruned would create a version nobody reads; the version before its slot is pruned first,
so it finds that gone, removes its own write and is fenced all the same.
"""

from __future__ import annotations

import json
import time
from typing import Any

from core import storage
from core.storage import Location


class Fenced(RuntimeError):
    """A newer controller of the same loop has written: this one must stop writing."""


class StateLog:
    def __init__(self, folder: Location, keep: int = 64) -> None:
        self.folder, self.keep = folder, keep

    def _loc(self, n: int) -> Location:
        return self.folder.join(f"{n:012d}.json")

    def _numbers(self) -> list[int]:
        return [int(f.relpath.split(".")[0]) for f in storage.list_files(self.folder, "*.json")]

    def latest(self) -> tuple[int, dict[str, Any] | None]:
        """The newest version's number and state (0 and None for an empty log)."""
        numbers = self._numbers()
        if not numbers:
            return 0, None
        return numbers[-1], storage.read_json(self._loc(numbers[-1]))["state"]

    def write(self, after: int, epoch: int, state: dict[str, Any]) -> int:
        """Write ``state`` as the version after ``after``; returns its number.

        Raises :class:`Fenced` if another writer got there first (nothing is written).
        """
        n = after + 1
        body = {"version": n, "epoch": epoch, "written_at": time.time(), "state": state}
        if not storage.create_exclusive(self._loc(n), json.dumps(body).encode()):
            raise Fenced(self._who_fenced(epoch, n))
        if after and not storage.exists(self._loc(after)):  # our slot had been pruned
            storage.delete(self._loc(n))
            raise Fenced(f"controller epoch {epoch} is fenced: version {after} was pruned")
        if n > self.keep:
            storage.delete(self._loc(n - self.keep))
        return n

    def _who_fenced(self, epoch: int, n: int) -> str:
        try:
            other = storage.read_json(self._loc(n)).get("epoch", "?")
        except (storage.StorageError, ValueError):  # pruned or unreadable: the number is enough
            other = "?"
        return f"controller epoch {epoch} is fenced: version {n} was written by epoch {other}"

    def claim(self, default: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Become the newest writer: ``(epoch, state)``, the state as last written (or
        ``default`` for an empty log), written again as the epoch's first version."""
        while True:
            newest, state = self.latest()
            state = default if state is None else state
            try:
                epoch = self.write(newest, newest + 1, state)
            except Fenced:  # another controller started at the same moment: go again
                continue
            self._prune(epoch)
            return epoch, state

    def _prune(self, newest: int) -> None:
        """Versions a crash left behind its prune (``write`` deletes one per write)."""
        for n in self._numbers():
            if n <= newest - self.keep:
                storage.delete(self._loc(n))


def read_state(folder: Location) -> dict[str, Any] | None:
    """The newest state a controller wrote, for readers (the report, tests, operators)."""
    return StateLog(folder).latest()[1]
