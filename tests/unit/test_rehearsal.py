"""Rehearsal: which corpus blocks a loop fine-tune replays, and which corpus it replays."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import storage
from core.loop.recipes import corpus_snapshot
from core.registry import ModelRegistry
from jobs.train import tail_pieces
from schemas.registry import Lineage, SnapshotRef
from schemas.snapshot import ShardInfo


class _Manifest:
    """Only what tail_pieces reads of a SnapshotManifest."""

    def __init__(self, blocks: list[int]) -> None:
        self.shards = [
            ShardInfo(path=f"shards/{i}.parquet", blocks=b, tokens=0, documents=0, sha256="")
            for i, b in enumerate(blocks)
        ]


@pytest.mark.parametrize(
    ("want", "expected"),
    [
        (0, []),
        (3, [(2, 1, 4)]),
        (6, [(1, 1, 3), (2, 0, 4)]),
        (12, [(0, 0, 5), (1, 0, 3), (2, 0, 4)]),
        (100, [(0, 0, 5), (1, 0, 3), (2, 0, 4)]),
    ],
)
def test_tail_pieces_take_the_last_blocks_in_order(want, expected, tmp_path: Path) -> None:
    snap = storage.resolve(str(tmp_path))
    pieces = tail_pieces(snap, _Manifest([5, 3, 4]), want)
    got = [(int(Path(loc.path).stem), start, stop) for loc, start, stop in pieces]
    assert got == expected
    assert sum(stop - start for _, start, stop in got) == min(want, 12)


def _folder(tmp_path: Path, tag: str) -> Path:
    folder = tmp_path / "src" / tag
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(tag.encode() * 10)
    return folder


def test_corpus_snapshot_skips_feedback_snapshots_along_the_lineage(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path / "registry"), actor="t")
    feedback_root = str(tmp_path / "loop" / "feedback")
    corpus = SnapshotRef(snapshot_id="corpus", uri=str(tmp_path / "datasets" / "corpus"))

    def feedback(n: int) -> SnapshotRef:
        return SnapshotRef(snapshot_id=f"fb{n}", uri=f"{feedback_root}/train/snapshots/fb{n}")

    reg.register("m", _folder(tmp_path, "a"), lineage=Lineage(dataset_snapshots=[corpus]))
    # A loop fine-tune that rehearsed the corpus lists it after its feedback snapshot; one
    # that did not (replay_blocks: 0) lists only feedback, and the walk goes to its parent.
    reg.register(
        "m",
        _folder(tmp_path, "b"),
        lineage=Lineage(dataset_snapshots=[feedback(1)], parent="m:1"),
    )
    reg.register(
        "m",
        _folder(tmp_path, "c"),
        lineage=Lineage(dataset_snapshots=[feedback(2), corpus], parent="m:2"),
    )
    for ref in ("m:1", "m:2", "m:3"):
        assert corpus_snapshot(reg, ref, feedback_root) == corpus.uri, ref
    assert corpus_snapshot(reg, None, feedback_root) is None
    reg.register("orphan", _folder(tmp_path, "d"), lineage=Lineage(dataset_snapshots=[feedback(3)]))
    assert corpus_snapshot(reg, "orphan:1", feedback_root) is None
