"""Erasure and retention in the event log: tombstones in place, and the ledger.

An erased event's line becomes a tombstone (``schemas.events.Erased``: its id and the
erasure that took it), so a segment keeps its number and every line its index: an offset a
consumer committed names the same event before and after. Each segment is rewritten whole
and atomically (``EventLog.replace_segment``); a rewrite that finds nothing to change writes
nothing, so a rerun is a no-op.

The ledger (``<event_log_uri>/_erasures/<NNNNNNNN>.json``, created exclusively, numbered
like the audit log) records each user erasure (``schemas.erasure.ErasureRecord``): salted
hashes of the pseudonyms, the event and response ids. Readers of derived data (the snapshot
job, the feedback consumer) drop what it lists; a rerun finds its earlier records by hash.

Retention (:func:`compact`) tombstones every event created before a cutoff the same way.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from core import storage
from core.events import EventLog
from schemas.erasure import ErasureRecord
from schemas.events import Erased, Feedback, ServedOutput, utc_now

_MAX_RETRIES = 1000
RETENTION = "retention"


def subject_hash(salt: str, pseudonym: str) -> str:
    return hashlib.sha256(f"{salt}\0{pseudonym}".encode()).hexdigest()


def subject_of(who: str | None) -> str | None:
    """The pseudonymous user a ``user`` or ``principal`` field names (``key/u-...``)."""
    return who.rpartition("/")[2] if who else None


class ErasureLedger:
    """The numbered erasure records of one event log."""

    def __init__(self, log: EventLog) -> None:
        self.folder = log.root.join("_erasures")

    def records(self, after: int = 0) -> list[ErasureRecord]:
        """Records numbered above ``after``, in order."""
        files = storage.list_files(self.folder, "*.json")
        return [
            ErasureRecord.model_validate(storage.read_json(f.location))
            for f in files
            if int(f.relpath.split(".")[0]) > after
        ]

    def add(
        self, pseudonyms: Iterable[str], found: UserEvents, versions: list[str]
    ) -> ErasureRecord:
        salt = secrets.token_hex(16)
        for _ in range(_MAX_RETRIES):
            number = len(storage.list_files(self.folder, "*.json")) + 1
            record = ErasureRecord(
                erasure_id=f"erasure-{number:08d}",
                created_at=utc_now(),
                salt=salt,
                subject_hashes=sorted(subject_hash(salt, p) for p in set(pseudonyms)),
                event_ids=sorted(found.event_ids),
                response_ids=sorted(found.response_ids),
                versions=versions,
            )
            body = record.model_dump_json(indent=1).encode()
            if storage.create_exclusive(self.folder.join(f"{number:08d}.json"), body):
                return record
        raise storage.StorageError("could not add to the erasure ledger: too much contention")

    def of(self, pseudonyms: Iterable[str]) -> list[ErasureRecord]:
        """Earlier records of the user with any of these pseudonyms."""
        wanted = set(pseudonyms)
        return [r for r in self.records() if is_subject_of([r])(wanted)]


def is_subject_of(records: list[ErasureRecord]) -> Callable[[Iterable[str | None]], bool]:
    """A test: do any of these user/principal fields name a subject of ``records``?"""
    salted = [(r.salt, set(r.subject_hashes)) for r in records]

    def test(fields: Iterable[str | None]) -> bool:
        names = {s for s in map(subject_of, fields) if s}
        return any(subject_hash(salt, n) in hashes for salt, hashes in salted for n in names)

    return test


@dataclass
class UserEvents:
    """What one user left in the log: ids to erase, and their prompts (by version) so
    derived word counts can be taken back before the text is gone."""

    event_ids: set[str] = field(default_factory=set)
    response_ids: set[str] = field(default_factory=set)
    prompts: dict[str, list[str]] = field(default_factory=dict)

    def merge(self, records: list[ErasureRecord]) -> UserEvents:
        for r in records:
            self.event_ids.update(r.event_ids)
            self.response_ids.update(r.response_ids)
        return self


def find_user_events(log: EventLog, pseudonyms: set[str]) -> UserEvents:
    """Every served output and feedback of the user (``user`` or ``principal`` names one of
    ``pseudonyms``), and any feedback on a response served to them."""
    found = UserEvents()
    events = [e for _, e in log.read()]
    for e in events:
        if subject_of(e.user) in pseudonyms or subject_of(e.principal) in pseudonyms:
            found.event_ids.add(e.event_id)
            if isinstance(e, ServedOutput):
                found.response_ids.add(e.response_id)
                found.prompts.setdefault(e.model_version, []).append(e.prompt)
    for e in events:
        if isinstance(e, Feedback) and e.response_id in found.response_ids:
            found.event_ids.add(e.event_id)
    return found


def tombstone(log: EventLog, event_ids: set[str], erasure: str) -> dict[int, int]:
    """Replace the events in ``event_ids`` by tombstones; segment -> events erased."""
    return _rewrite(log, lambda e: e.event_id in event_ids, erasure)


def compact(log: EventLog, cutoff: datetime) -> dict[int, int]:
    """Retention: tombstone every event created before ``cutoff`` (aware datetime).

    Kept: every segment (its number and line count) and every event's id, so consumer
    offsets and snapshot lineage stay valid; events from ``cutoff`` on are untouched.
    Dropped: everything else of the older events (text, users, versions, timings).
    Derived data (feedback snapshots, the consumer's state) is not touched: the consumer
    keeps only its join window, snapshots are erased per user (:mod:`core.loop.erasure`).
    Returns segment -> events compacted; a second run with the same cutoff changes nothing.
    """
    if cutoff.tzinfo is None:
        raise ValueError("the retention cutoff needs a time zone (UTC)")
    return _rewrite(log, lambda e: datetime.fromisoformat(e.created_at) < cutoff, RETENTION)


def _rewrite(
    log: EventLog, drop: Callable[[ServedOutput | Feedback], bool], erasure: str
) -> dict[int, int]:
    changed: dict[int, int] = {}
    for number in log.segment_numbers():
        lines = log.read_lines(number)
        new = [
            Erased(event_id=e.event_id, erasure=erasure)
            if not isinstance(e, Erased) and drop(e)
            else e
            for e in lines
        ]
        n = sum(a is not b for a, b in zip(lines, new, strict=True))
        if n:
            log.replace_segment(number, new)
            changed[number] = n
    return changed
