"""The event log: append-only, numbered segments of JSON lines in object storage.

Layout: ``<root>/segments/0000000001.jsonl``, ``0000000002.jsonl``, ... Each segment is
written whole with a create-exclusive write under the next free number, so numbers are dense
and a segment is visible complete or not at all: a reader that has seen segment N has seen
everything before it, and an offset ``(segment, line)`` names a place that never moves.
Consumers keep their own committed offset and read from it.

:class:`core.wal.WriteAheadLog` is the local file an event writer appends acknowledged events
to (fsync'd) before they reach a segment, so an acknowledged event survives a crash of the
writer: on restart the writer replays it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from core import storage
from core.storage import Location
from schemas.events import Erased, Feedback, ServedOutput, parse_line
from schemas.storage import StorageSettings

SEGMENT_DIGITS = 10


@dataclass(frozen=True, order=True)
class Offset:
    """The next event to read: segment number and line within it."""

    segment: int = 1
    line: int = 0

    def to_json(self) -> dict[str, int]:
        return {"segment": self.segment, "line": self.line}


class EventLog:
    """Segments of events under one root (local folder or ``s3://``)."""

    def __init__(self, uri: str | Location, settings: StorageSettings | None = None) -> None:
        self.root = storage.resolve(uri, settings)
        self.folder = self.root.join("segments")

    def segment_numbers(self) -> list[int]:
        return [int(e.relpath.split(".")[0]) for e in storage.list_files(self.folder, "*.jsonl")]

    def append_segment(self, events: list[ServedOutput | Feedback]) -> int:
        """Write ``events`` as the next segment; returns its number."""
        if not events:
            raise ValueError("a segment needs at least one event")
        body = ("\n".join(e.model_dump_json() for e in events) + "\n").encode()
        number = max(self.segment_numbers(), default=0) + 1
        while not storage.create_exclusive(self._segment(number), body):
            number += 1  # another writer took it; numbers stay dense
        return number

    def read_segment(self, number: int) -> list[ServedOutput | Feedback]:
        return [e for e in self.read_lines(number) if not isinstance(e, Erased)]

    def read_lines(self, number: int) -> list[ServedOutput | Feedback | Erased]:
        """Every line of a segment, tombstones included: line ``i`` is offset ``i``."""
        raw = storage.read_bytes(self._segment(number))
        return [parse_line(line) for line in raw.splitlines() if line.strip()]

    def replace_segment(self, number: int, lines: list[ServedOutput | Feedback | Erased]) -> None:
        """Rewrite a segment in place, atomically (``core.erasure`` only: tombstones, line
        for line, so no offset moves)."""
        if len(lines) != len(self.read_lines(number)):
            raise ValueError(f"segment {number}: a rewrite must keep every line")
        body = ("\n".join(e.model_dump_json() for e in lines) + "\n").encode()
        storage.write_bytes(self._segment(number), body)

    def read(
        self, offset: Offset = Offset(), limit: int | None = None
    ) -> Iterator[tuple[Offset, ServedOutput | Feedback]]:
        """Events from ``offset`` on, each with the offset just after it; tombstones are
        skipped but keep their line, so offsets are the same before and after an erasure."""
        count = 0
        for number in self.segment_numbers():
            if number < offset.segment:
                continue
            events = self.read_lines(number)
            start = offset.line if number == offset.segment else 0
            for i in range(start, len(events)):
                if isinstance(events[i], Erased):
                    continue
                if limit is not None and count >= limit:
                    return
                count += 1
                after = Offset(number + 1, 0) if i + 1 == len(events) else Offset(number, i + 1)
                yield after, events[i]

    def _segment(self, number: int) -> Location:
        return self.folder.join(f"{number:0{SEGMENT_DIGITS}d}.jsonl")


def load_offset(loc: Location) -> Offset:
    """A consumer's committed offset (the start when none was committed)."""
    if not storage.exists(loc):
        return Offset()
    return Offset(**json.loads(storage.read_bytes(loc)))
