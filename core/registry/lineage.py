"""Lineage below a model version: the dataset snapshot it was trained on, that snapshot's raw
inputs and the snapshots it was built from."""

from __future__ import annotations

from typing import Any

from core.storage import StorageError
from schemas.storage import StorageSettings


def walk_snapshot(uri: str, snapshot_id: str, depth: int, nodes: list, s3: Any) -> None:
    from core.data.feedback import open_training_data
    from core.data.snapshots import SnapshotNotFound
    from schemas.feedback import FeedbackManifest

    settings = StorageSettings(s3=s3) if s3 else None
    try:
        _, m = open_training_data(uri, settings)
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
    if isinstance(m, FeedbackManifest):
        _walk_feedback(m, snapshot_id, depth, nodes)
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


def _walk_feedback(m: Any, snapshot_id: str, depth: int, nodes: list) -> None:
    """A feedback snapshot: its counts by kind, then every event it came from."""
    c = m.counts
    detail = (
        f"feedback: {c.sft} corrections, {c.preference} preference pairs, "
        f"{c.kto_desirable + c.kto_undesirable} rated answers"
    )
    nodes.append({"depth": depth, "kind": "snapshot", "id": snapshot_id, "detail": detail})
    for parent in m.parents:
        nodes.append({"depth": depth + 1, "kind": "source", "id": parent, "detail": ""})
