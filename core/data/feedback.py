"""Writing and reading feedback snapshots (``schemas.feedback``): token ids, not packed text.

Written by ``jobs.feedback_snapshot``; read by the training objectives (``jobs/train``) and
the gate (``jobs.evaluate``), always through the manifest. Each file is written atomically
and the manifest last, so a crash mid-write leaves nothing a reader would take for a
snapshot; the same examples give the same id, so a retry is a no-op.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core import storage
from core.data.snapshots import SnapshotNotFound, resolve_snapshot
from core.storage import Location
from schemas.feedback import KIND_COLUMNS, FeedbackCounts, FeedbackFile, FeedbackManifest
from schemas.snapshot import SnapshotManifest, TokenizerInfo
from schemas.storage import StorageSettings


def open_feedback(
    uri: str | Location, settings: StorageSettings | None = None
) -> tuple[Location, FeedbackManifest]:
    loc, manifest = open_training_data(uri, settings)
    if not isinstance(manifest, FeedbackManifest):
        raise SnapshotNotFound(f"{loc.uri} is a corpus snapshot, not a feedback snapshot")
    return loc, manifest


def open_training_data(
    uri: str | Location, settings: StorageSettings | None = None
) -> tuple[Location, FeedbackManifest | SnapshotManifest]:
    """A feedback snapshot, or a corpus snapshot (a folder or a dataset root meaning its
    newest, :func:`core.data.snapshots.resolve_snapshot`), by its manifest's kind."""
    loc = storage.resolve(uri, settings)
    manifest = loc.join("manifest.json")
    raw = storage.read_json_if_exists(manifest)
    if raw and raw.get("kind") == "feedback_snapshot":
        return loc, FeedbackManifest.model_validate(raw)
    return resolve_snapshot(loc)


def read_rows(snap: Location, manifest: FeedbackManifest, kind: str) -> list[dict[str, Any]]:
    """The rows of one kind, in file order ([] when the snapshot has none)."""
    rows: list[dict[str, Any]] = []
    for f in manifest.files:
        if f.kind == kind:
            rows.extend(storage.read_parquet(snap.join(f.path)).to_pylist())
    return rows


def snapshot_id(rows: dict[str, list[dict[str, Any]]], tokenizer_sha: str) -> str:
    """Content hash of every row of every kind and of the tokenizer."""
    digest = hashlib.sha256(tokenizer_sha.encode())
    for kind in sorted(rows):
        for row in rows[kind]:
            digest.update(json.dumps([kind, row], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def write_feedback(
    root: Location,
    name: str,
    role: str,
    rows: dict[str, list[dict[str, Any]]],
    tokenizer: TokenizerInfo,
    tokenizer_files: dict[str, bytes],
    quarantined: dict[str, int],
    corpus_snapshot: str | None = None,
    code_version: str = "unknown",
    principals: int | None = None,
) -> tuple[Location, FeedbackManifest]:
    """Publish ``rows`` (kind -> rows with that kind's columns) under ``root/snapshots``."""
    sid = snapshot_id(rows, tokenizer.sha256)
    folder = root.join("snapshots", sid)
    if storage.exists(folder.join("manifest.json")):
        return open_feedback(folder)
    files = []
    for kind, part in sorted(rows.items()):
        if part:
            files.append(_write_kind(folder, kind, part))
    for rel, data in tokenizer_files.items():
        storage.write_bytes(folder.join(tokenizer.path, rel), data)
    kto = rows.get("kto", [])
    manifest = FeedbackManifest(
        snapshot_id=sid,
        name=name,
        role=role,  # type: ignore[arg-type]
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        tokenizer=tokenizer,
        counts=FeedbackCounts(
            sft=len(rows.get("sft", [])),
            preference=len(rows.get("preference", [])),
            kto_desirable=sum(r["desirable"] for r in kto),
            kto_undesirable=sum(not r["desirable"] for r in kto),
            quarantined=quarantined,
        ),
        files=files,
        parents=sorted({i for part in rows.values() for r in part for i in r["event_ids"]}),
        corpus_snapshot=corpus_snapshot,
        code_version=code_version,
        principals=principals,
    )
    storage.write_json(folder.join("manifest.json"), manifest.model_dump(mode="json"))
    return folder, manifest


def _write_kind(folder: Location, kind: str, part: list[dict[str, Any]]) -> FeedbackFile:
    columns = KIND_COLUMNS[kind]
    table = pa.Table.from_pylist([{c: r[c] for c in columns} for r in part])
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    path = f"{kind}.parquet"
    storage.write_bytes(folder.join(path), data)
    return FeedbackFile(
        kind=kind,  # type: ignore[arg-type]
        path=path,
        rows=len(part),
        sha256=hashlib.sha256(data).hexdigest(),
    )
