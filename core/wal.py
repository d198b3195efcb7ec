"""The write-ahead log an event writer appends acknowledged events to before they reach a
segment: a local file of framed records, fsync'd on every append.

A record is ``MAGIC, length, CRC-32`` (10 bytes, big-endian) and the event's JSON. Framing is
what makes a failed or torn write recoverable: reading stops at the first record whose frame
or checksum is wrong, and :meth:`WriteAheadLog.recover` cuts the file there, so a torn tail
can never glue onto the next record (as a torn JSON line did onto the next line). An append
that fails part way (disk full, EIO) cuts its own partial records off before it raises; if
even that fails the log refuses appends until :meth:`recover` succeeds, so nothing is
acknowledged after bytes that would hide it.

Files written before framing (JSON lines) are read as such; the next rewrite frames them.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

from core.local_disk import fsync_dir
from schemas.events import Feedback, ServedOutput, parse_event

MAGIC = b"\xfa\x1e"
_HEADER = struct.Struct(">2sII")  # magic, payload length, CRC-32 of the payload
MAX_RECORD = 16 * 2**20  # a length past this is a torn frame, not an event


class WalError(OSError):
    """An append did not become durable: nothing of it is acknowledged."""


def frame(event: ServedOutput | Feedback) -> bytes:
    payload = event.model_dump_json().encode()
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def parse_records(data: bytes) -> tuple[list[ServedOutput | Feedback], int]:
    """The events of a log's bytes, and how many bytes of it are whole records."""
    if data[:1] == b"{":  # a log from before framing: JSON lines, a torn last one dropped
        return _legacy(data), len(data)
    events, at = [], 0
    while at + _HEADER.size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, at)
        end = at + _HEADER.size + length
        if magic != MAGIC or length > MAX_RECORD or end > len(data):
            break
        payload = data[at + _HEADER.size : end]
        if zlib.crc32(payload) != crc:
            break
        try:
            events.append(parse_event(payload))
        except ValueError:
            break
        at = end
    return events, at


def _legacy(data: bytes) -> list[ServedOutput | Feedback]:
    events = []
    for line in data.splitlines():
        try:
            events.append(parse_event(line))
        except ValueError:
            continue
    return events


class WriteAheadLog:
    """Append-only, one fsync per call (group commit, however many events it carries)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._broken = False
        self.torn_bytes = 0  # cut off by the last recover()

    def append(self, events: list[ServedOutput | Feedback]) -> None:
        """Durable when it returns; raises :class:`WalError` with nothing of it kept."""
        data = b"".join(frame(e) for e in events)
        with self._lock:
            if self._broken:
                raise WalError("the write-ahead log failed to cut a failed append: recover()")
            with open(self.path, "ab") as f:
                start = f.tell()
                try:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError as e:
                    self._cut(f, start)
                    raise WalError(f"write-ahead log append failed: {e}") from e

    def _cut(self, f: object, size: int) -> None:
        try:
            f.truncate(size)  # type: ignore[attr-defined]
            os.fsync(f.fileno())  # type: ignore[attr-defined]
        except OSError:
            self._broken = True

    def read_all(self) -> list[ServedOutput | Feedback]:
        """The events of every whole record (a torn tail is left out)."""
        if not self.path.exists():
            return []
        return parse_records(self.path.read_bytes())[0]

    def recover(self) -> list[ServedOutput | Feedback]:
        """The events of every whole record, the file cut after the last of them."""
        with self._lock:
            if not self.path.exists():
                self._broken = False
                return []
            data = self.path.read_bytes()
            events, whole = parse_records(data)
            self.torn_bytes = len(data) - whole
            if self.torn_bytes:
                with open(self.path, "r+b") as f:
                    f.truncate(whole)
                    os.fsync(f.fileno())
            self._broken = False
            return events

    def truncate(self, keep: list[ServedOutput | Feedback]) -> None:
        """Replace the log with ``keep`` (what is still not in a segment), atomically."""
        tmp = self.path.with_suffix(".tmp")
        with self._lock:
            with open(tmp, "wb") as f:
                f.write(b"".join(frame(e) for e in keep))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
            self._broken = False
