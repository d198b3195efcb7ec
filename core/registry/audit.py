"""The audit log: append-only entries, each chained to the one before by hash, so an edit or
a deletion in the middle shows in :meth:`AuditLog.verify`.

A chain alone does not show its own end being cut off, or an entry rewritten with every
entry after it re-chained. So each append also moves the *head*: ``_audit/heads/<seq>.json``
holding the entry count and the last hash, created exclusively after its entry (a
compare-and-set on the sequence number). :meth:`AuditLog.verify` checks the entries against
the newest head and every head against its entry; ``flywheel models audit --verify`` prints
the head so it can be anchored elsewhere (a ticket, another store) and checked against later
with ``--expect-head``, which catches even a rewrite of the heads.

Callers write an entry *before* the change it records (see ``core.registry.versions``): a
crash between the two leaves a recorded intent, never an unrecorded change.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from core import storage
from core.storage import Location, StorageError
from schemas.registry import AuditEntry

_MAX_RETRIES = 1000


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class AuditLog:
    """Append-only log whose entries are chained by hash, so edits and deletions show."""

    GENESIS = "0" * 64

    def __init__(self, folder: Location, actor: str) -> None:
        self.folder = folder
        self.heads = folder.join("heads")
        self.actor = actor

    def entries(self) -> list[AuditEntry]:
        return [
            AuditEntry.model_validate(storage.read_json(e.location))
            for e in storage.list_files(self.folder, "*.json")
        ]

    def append(
        self, action: str, subject: str, details: dict[str, Any] | None = None
    ) -> AuditEntry:
        for _ in range(_MAX_RETRIES):
            files = storage.list_files(self.folder, "*.json")
            last = (
                AuditEntry.model_validate(storage.read_json(files[-1].location)) if files else None
            )
            entry = AuditEntry(
                seq=(last.seq if last else 0) + 1,
                at=now(),
                actor=self.actor,
                action=action,
                subject=subject,
                details=details or {},
                prev_hash=last.hash if last else self.GENESIS,
            )
            entry.hash = entry_hash(entry)
            loc = self.folder.join(f"{entry.seq:08d}.json")
            if storage.create_exclusive(loc, entry.model_dump_json(indent=1).encode()):
                self._move_head(entry)
                return entry
        raise StorageError("could not append to the audit log: too much contention")

    def _move_head(self, entry: AuditEntry) -> None:
        head = {"count": entry.seq, "hash": entry.hash}
        storage.create_exclusive(
            self.heads.join(f"{entry.seq:08d}.json"), json.dumps(head).encode()
        )

    def head(self) -> dict[str, Any] | None:
        """The newest head: ``{"count", "hash"}`` of the chain as last appended."""
        files = storage.list_files(self.heads, "*.json")
        return storage.read_json(files[-1].location) if files else None

    def verify(self, expect_head: str | None = None) -> list[str]:
        """Problems found in the chain and its heads (empty when intact). ``expect_head``: a
        head anchored elsewhere (its hash), which the chain must still contain."""
        problems = []
        prev = self.GENESIS
        entries = self.entries()
        for i, entry in enumerate(entries, start=1):
            if entry.seq != i:
                problems.append(f"entry {i}: sequence number {entry.seq} (an entry is missing)")
            if entry.prev_hash != prev:
                problems.append(f"entry {entry.seq}: does not chain to the entry before it")
            if entry_hash(entry) != entry.hash:
                problems.append(f"entry {entry.seq}: content does not match its hash (edited)")
            prev = entry.hash
        problems += self._check_heads(entries)
        if expect_head and expect_head not in {e.hash for e in entries}:
            problems.append(f"the anchored head {expect_head[:16]}... is not in the chain")
        return problems

    def _check_heads(self, entries: list[AuditEntry]) -> list[str]:
        by_seq = {e.seq: e.hash for e in entries}
        heads = [storage.read_json(f.location) for f in storage.list_files(self.heads, "*.json")]
        problems = [
            f"head {h['count']}: entry {h['count']} is not the one it recorded (rewritten)"
            for h in heads
            if h["count"] in by_seq and by_seq[h["count"]] != h["hash"]
        ]
        newest = max((h["count"] for h in heads), default=0)
        if newest > len(entries):
            problems.append(f"the head records {newest} entries, {len(entries)} remain (cut)")
        return problems


def entry_hash(entry: AuditEntry) -> str:
    body = entry.model_dump(mode="json", exclude={"hash"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
