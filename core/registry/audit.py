"""The audit log: append-only entries, each chained to the one before by hash, so an edit or
a deletion in the middle shows in :meth:`AuditLog.verify`."""

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
                return entry
        raise StorageError("could not append to the audit log: too much contention")

    def verify(self) -> list[str]:
        """Problems found in the chain (empty when intact)."""
        problems = []
        prev = self.GENESIS
        for i, entry in enumerate(self.entries(), start=1):
            if entry.seq != i:
                problems.append(f"entry {i}: sequence number {entry.seq} (an entry is missing)")
            if entry.prev_hash != prev:
                problems.append(f"entry {entry.seq}: does not chain to the entry before it")
            if entry_hash(entry) != entry.hash:
                problems.append(f"entry {entry.seq}: content does not match its hash (edited)")
            prev = entry.hash
        return problems


def entry_hash(entry: AuditEntry) -> str:
    body = entry.model_dump(mode="json", exclude={"hash"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
