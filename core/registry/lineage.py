"""Lineage below a model version: the dataset snapshot it was trained on, that snapshot's raw
inputs and the snapshots it was built from."""

from __future__ import annotations

from typing import Any

from core.storage import StorageError
from schemas.storage import StorageSettings


def walk_snapshot(uri: str, snapshot_id: str, depth: int, nodes: list, s3: Any) -> None:
    from core.data.feedback import is_feedback_snapshot
    from core.data.snapshots import SnapshotNotFound, open_snapshot

    settings = StorageSettings(s3=s3) if s3 else None
    try:
        if is_feedback_snapshot(uri, settings):
            _walk_feedback(uri, snapshot_id, depth, nodes, settings)
            return
        _, m = open_snapshot(uri, settings)
    except (SnapshotNotFound, StorageError):
        nodes.append(
            {
                "depth": depth,
                "kind": "snapshot",
                "id": snapshot_id,
                "detail": f"not readable at {uri}",
            }
        )
        return
    c = m.counts
    nodes.append(
        {
            "depth": depth,
            "kind": "snapshot",
            "id": snapshot_id,
            "detail": f"{c.documents} documents, {c.tokens} tokens, from {m.input_uri}",
        }
    )
    for f in m.inputs:
        nodes.append(
            {
                "depth": depth + 1,
                "kind": "raw",
                "id": f.path,
                "detail": f"{f.size} bytes, sha256 {f.sha256[:12]}",
            }
        )
    for parent in m.parents:
        nodes.append({"depth": depth + 1, "kind": "source", "id": parent, "detail": ""})


def _walk_feedback(
    uri: str, snapshot_id: str, depth: int, nodes: list, settings: StorageSettings | None
) -> None:
    """A feedback snapshot: its counts by kind, then every event it came from."""
    from core.data.feedback import open_feedback

    _, m = open_feedback(uri, settings)
    c = m.counts
    detail = (
        f"feedback: {c.sft} corrections, {c.preference} preference pairs, "
        f"{c.kto_desirable + c.kto_undesirable} rated answers"
    )
    nodes.append({"depth": depth, "kind": "snapshot", "id": snapshot_id, "detail": detail})
    for parent in m.parents:
        nodes.append({"depth": depth + 1, "kind": "source", "id": parent, "detail": ""})
