"""Erasing one user from everything the loop derived from the event log.

:func:`erase_user` finds the user's events (``core.erasure``), records the erasure in the
ledger first (a rerun after a crash finds the record by hash and finishes), then removes:

- from the consumer's ``state.json``: pending joins, rated responses, and the text of their
  correction and rating candidates (the entry stays, emptied and superseded, so absolute
  indices hold); their prompts' words are taken out of the live word profiles;
- from every feedback snapshot (the loop's, and any a version's lineage names): every row
  naming one of their events, whole (a row two users' duplicates collapsed into goes too);
  KTO's KL pairs are re-chosen among the rows left; counts and ``parents`` are updated. The
  folder keeps its snapshot id, so lineage still resolves (the id no longer hashes the rows);
- from quarantine files and frozen publishing-job configs: items naming their events;
- from the event log: their lines, as tombstones (offsets never move).

Then an audit entry ``data.erase`` (ids and counts only). Model weights are not unlearned:
the versions whose lineage holds their events are returned, for retraining.

A running consumer re-reads the ledger on every poll and forgets the same entries in memory
(:func:`scrub_consumer_state`); only the words of prompts it no longer holds cannot be taken
out of its profiles that way, so stop the loop around an erasure for a complete one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core import storage
from core.data.feedback import _write_kind, open_feedback, read_rows
from core.data.snapshots import SnapshotNotFound
from core.erasure import (
    ErasureLedger,
    UserEvents,
    compact,
    find_user_events,
    is_subject_of,
    tombstone,
)
from core.events import EventLog
from core.loop.drift import WordProfile
from core.loop.feedback_state import ConsumerState, load_consumer_state
from core.registry import ModelRegistry
from core.storage import Location, StorageError
from schemas.erasure import ErasureRecord
from schemas.feedback import FeedbackCounts
from schemas.loop import FeedbackSnapshotConfig, LoopConfig
from schemas.storage import StorageSettings

Test = Callable[[Iterable[str | None]], bool]


@dataclass
class ErasureReport:
    erasure_id: str | None
    events: int
    segments: int
    snapshots: dict[str, int]
    state_entries: int
    other_files: int
    versions: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.events or self.snapshots or self.state_entries or self.other_files)


def erase_user(cfg: LoopConfig, pseudonyms: set[str], actor: str | None = None) -> ErasureReport:
    """Erase the user with these pseudonyms (one per API key) everywhere; see the module."""
    if not pseudonyms:
        raise ValueError("no pseudonym to erase")
    log = EventLog(cfg.event_log_uri, cfg.storage)
    registry = ModelRegistry(cfg.registry_uri, cfg.storage, actor=actor)
    ledger = ErasureLedger(log)
    earlier = ledger.of(pseudonyms)
    found = find_user_events(log, pseudonyms)
    known = UserEvents().merge(earlier).event_ids
    if found.event_ids - known:
        found.merge(earlier)
        record = ledger.add(pseudonyms, found, affected_versions(registry, found.event_ids))
        earlier.append(record)
    found.merge(earlier)
    if not earlier:
        return ErasureReport(None, 0, 0, {}, 0, 0, [])
    record = earlier[-1]
    test = is_subject_of(earlier)
    loop_root = storage.resolve(cfg.loop_uri, cfg.storage)
    entries = scrub_state_file(loop_root, found, test)
    snapshots = {
        loc.uri: n
        for loc in feedback_snapshots(loop_root, registry, cfg.storage)
        if (n := scrub_snapshot(loc, found.event_ids))
    }
    others = scrub_loop_files(loop_root, found.event_ids)
    erased = tombstone(log, found.event_ids, record.erasure_id)
    versions = sorted({v for r in earlier for v in r.versions})
    report = ErasureReport(
        record.erasure_id,
        sum(erased.values()),
        len(erased),
        snapshots,
        entries,
        others,
        versions,
    )
    if report.changed:
        details = {
            "erasure_id": record.erasure_id,
            "events": report.events,
            "segments": sorted(erased),
            "snapshot_rows": snapshots,
            "state_entries": entries,
            "other_files": others,
            "versions_affected": versions,
        }
        registry.audit.append("data.erase", record.erasure_id, details)
    return report


def affected_versions(registry: ModelRegistry, event_ids: set[str]) -> list[str]:
    """Every version whose lineage (itself, its bases and parents) holds one of the events."""
    out = []
    for name in registry.models():
        for v in registry.versions(name):
            nodes = registry.lineage(v.ref)
            if any(n["kind"] == "source" and n["id"] in event_ids for n in nodes):
                out.append(v.ref)
    return out


# -- the consumer's state ---------------------------------------------------------------------


def scrub_state_file(loop_root: Location, found: UserEvents, test: Test) -> int:
    loc = loop_root.join("consumer", "state.json")
    if not storage.exists(loc):
        return 0
    state = load_consumer_state(storage.read_json(loc))
    n = scrub_consumer_state(state, found, test, found.prompts)
    if n:
        storage.write_json(loc, state.model_dump(mode="json"))
    return n


def scrub_consumer_state(
    state: ConsumerState,
    found: UserEvents,
    test: Test,
    prompts: dict[str, list[str]] | None = None,
) -> int:
    """Forget the user's entries in ``state``; how many went. ``prompts`` (version -> the
    prompts they were served) come out of the word profiles; None: only those of the pending
    joins dropped here (all a consumer still knows of)."""
    ids = found.event_ids

    def theirs(event_id: str, *who: str | None) -> bool:
        return event_id in ids or test(who)

    served = {
        k: v for k, v in state.pending_served.items() if theirs(v.event_id, v.user, v.principal)
    }
    if prompts is None:
        prompts = {}
        for v in served.values():
            prompts.setdefault(v.version, []).append(v.prompt)
    state.pending_served = {k: v for k, v in state.pending_served.items() if k not in served}
    n = len(served) + _profiles_without(state, prompts)
    for rid, waiting in list(state.pending_feedback.items()):
        kept = [f for f in waiting if not theirs(f.event_id, f.user, f.principal)]
        n += len(waiting) - len(kept)
        state.pending_feedback[rid] = kept
    state.pending_feedback = {k: v for k, v in state.pending_feedback.items() if v}
    rated = {k for k, r in state.rated.items() if k in found.response_ids or test([r.principal])}
    state.rated = {k: r for k, r in state.rated.items() if k not in rated}
    n += len(rated)
    for c in [*state.candidates, *state.ratings]:
        if (set(c.event_ids) & ids or test([c.user])) and (c.prompt or c.user):
            # Emptied, not removed: candidates are addressed by absolute index.
            update = {"prompt": "", "user": None, "user_text": None, "superseded": True}
            text = {"answer": "", "rejected": None} if hasattr(c, "answer") else {"completion": ""}
            for k, v in (update | text).items():
                setattr(c, k, v)
            n += 1
    state.seen = {k: t for k, t in state.seen.items() if k not in ids}
    return n


def _profiles_without(state: ConsumerState, prompts: dict[str, list[str]]) -> int:
    """Take the words of ``prompts`` out of the versions' live profiles; words changed."""
    changed = 0
    for version, texts in prompts.items():
        raw = state.profiles.get(version)
        if not raw:
            continue
        live, gone = WordProfile.from_json(raw), WordProfile()
        for t in texts:
            gone.add(t)
        counts = Counter({w: c - gone.counts[w] for w, c in live.counts.items()})
        changed += sum(1 for w in gone.counts if w in live.counts)
        live.counts = Counter({w: c for w, c in counts.items() if c > 0})
        state.profiles[version] = live.to_json()
    return changed


# -- feedback snapshots and the loop's other files -----------------------------------------


def feedback_snapshots(
    loop_root: Location, registry: ModelRegistry, settings: StorageSettings | None = None
) -> list[Location]:
    """The loop's feedback snapshots, and any other a registered version trained on."""
    pattern = "*/snapshots/*/manifest.json"
    folders = [e.location.parent() for e in storage.list_files(loop_root.join("feedback"), pattern)]
    for name in registry.models():
        for v in registry.versions(name):
            folders += [storage.resolve(s.uri, settings) for s in v.lineage.dataset_snapshots]
    unique = {f.uri: f for f in folders}
    return [unique[u] for u in sorted(unique)]


def scrub_snapshot(folder: Location, event_ids: set[str]) -> int:
    """Rewrite a feedback snapshot without the rows naming ``event_ids``; rows removed."""
    try:
        loc, manifest = open_feedback(folder)
    except (SnapshotNotFound, StorageError):
        return 0  # a corpus snapshot, or gone: nothing of a user's feedback in it
    if not event_ids & set(manifest.parents):
        return 0
    rows = {f.kind: read_rows(loc, manifest, f.kind) for f in manifest.files}
    kept = {k: [r for r in rs if not event_ids & set(r["event_ids"])] for k, rs in rows.items()}
    kto = kept.get("kto", [])
    for i, r in enumerate(kto):
        # The KL pair was the next row's answer, maybe an erased one: re-chosen among the rest.
        r["kl_completion_ids"] = kto[(i + 1) % len(kto)]["completion_ids"]
    files = []
    for f in manifest.files:
        if kept[f.kind]:
            files.append(_write_kind(loc, f.kind, kept[f.kind]))
        else:
            storage.delete(loc.join(f.path))
    counts = FeedbackCounts(
        sft=len(kept.get("sft", [])),
        preference=len(kept.get("preference", [])),
        kto_desirable=sum(r["desirable"] for r in kto),
        kto_undesirable=sum(not r["desirable"] for r in kto),
        quarantined=manifest.counts.quarantined,
    )
    parents = sorted({i for part in kept.values() for r in part for i in r["event_ids"]})
    update: dict[str, Any] = {"counts": counts, "files": files, "parents": parents}
    if "principals" in type(manifest).model_fields:
        update["principals"] = None  # rows do not name their users: it cannot be recounted
    new = manifest.model_copy(update=update)
    storage.write_json(loc.join("manifest.json"), new.model_dump(mode="json"))
    return sum(len(p) for p in rows.values()) - sum(len(p) for p in kept.values())


def scrub_loop_files(loop_root: Location, event_ids: set[str]) -> int:
    """Quarantine files and frozen publishing configs without items naming the events."""
    changed = 0
    for e in storage.list_files(loop_root.join("feedback", "quarantine"), "*.jsonl"):
        lines = storage.read_bytes(e.location).decode().splitlines()
        kept = [ln for ln in lines if not event_ids & set(json.loads(ln)["event_ids"])]
        if len(kept) != len(lines):
            storage.write_text(e.location, "".join(ln + "\n" for ln in kept))
            changed += 1
    for e in storage.list_files(loop_root.join("jobs"), "*/publishing.json"):
        job = FeedbackSnapshotConfig.model_validate(storage.read_json(e.location))
        kept_job = without_erased(job, event_ids)
        if kept_job != job:
            storage.write_json(e.location, kept_job.model_dump(mode="json"))
            changed += 1
    return changed


def without_erased(job: FeedbackSnapshotConfig, event_ids: set[str]) -> FeedbackSnapshotConfig:
    """A publishing job without the examples, rated answers and quarantined items naming
    any of ``event_ids`` (what the ledger lists)."""

    def keep(items: list[Any]) -> list[Any]:
        return [i for i in items if not event_ids & set(i.event_ids)]

    return job.model_copy(
        update={
            "examples": keep(job.examples),
            "rated": keep(job.rated),
            "quarantined": keep(job.quarantined),
        }
    )


def erased_event_ids(cfg: LoopConfig) -> set[str]:
    """Every event id the loop's erasure ledger lists."""
    log = EventLog(cfg.event_log_uri, cfg.storage)
    return UserEvents().merge(ErasureLedger(log).records()).event_ids


def ledger_filter(records: list[ErasureRecord]) -> tuple[UserEvents, Test]:
    """What a consumer forgets for these ledger records: their ids, and a subject test."""
    return UserEvents().merge(records), is_subject_of(records)


def apply_retention(
    cfg: LoopConfig,
    days: float | None = None,
    now: datetime | None = None,
    actor: str | None = None,
) -> dict[int, int]:
    """Compact the loop's event log to ``days`` (default ``cfg.retention_days``) before
    ``now`` (:func:`core.erasure.compact`: tombstones, offsets kept); audited as
    ``data.retention`` when anything changed. Returns segment -> events compacted."""
    days = cfg.retention_days if days is None else days
    if days <= 0:
        raise ValueError(f"retention_days must be above 0, got {days}")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    changed = compact(EventLog(cfg.event_log_uri, cfg.storage), cutoff)
    if changed:
        details = {
            "cutoff": cutoff.isoformat(),
            "retention_days": days,
            "events": sum(changed.values()),
            "segments": sorted(changed),
        }
        registry = ModelRegistry(cfg.registry_uri, cfg.storage, actor=actor)
        registry.audit.append("data.retention", cfg.event_log_uri, details)
    return changed
