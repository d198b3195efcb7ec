"""Ingest end to end: local disk and S3 agree, every planted defect is accounted for,
crashes and reruns lose nothing and redo nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core import faults, storage
from core.data.snapshots import SnapshotNotFound, iter_documents, open_snapshot, token_array
from demo.corpus import PlantedTruth, generate_corpus
from demo.run import account, surviving_pii
from jobs.ingest import run_ingest
from schemas.ingest import IngestConfig

pytestmark = pytest.mark.slow
OVERSIZED = 10_000_000  # a 10 MB line: above max_record_bytes, and it spans several splits


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, PlantedTruth]:
    out = tmp_path_factory.mktemp("corpus")
    planted = generate_corpus(out, target_bytes=400_000, seed=3, oversized_line_bytes=OVERSIZED)
    return out / "raw", planted


def make_cfg(input_uri: str, output_uri: str, settings=None, **execution) -> IngestConfig:
    return IngestConfig.model_validate(
        {
            "name": "t",
            "storage": settings.model_dump() if settings else {},
            "input": {"uri": input_uri, "split_bytes": 4_000_000},
            "output": {"uri": output_uri},
            "tokenizer": {"kind": "train", "vocab_size": 1000},
            "pack": {"block_size": 128},
            "execution": {
                "num_cpus_per_task": 0.5,
                "cpus_per_tokenize_actor": 0.5,
                **execution,
            },
        }
    )


def published(cfg: IngestConfig, snapshot_id: str):
    return open_snapshot(
        storage.resolve(cfg.output.uri, cfg.storage).join("snapshots", snapshot_id)
    )


def test_local_and_s3_agree_and_account_for_everything(ray_session, corpus, s3_store) -> None:
    raw, planted = corpus
    s3_raw = storage.resolve(s3_store.uri("raw"), s3_store.settings)
    storage.upload_dir(raw, s3_raw)

    local_cfg = make_cfg(str(raw), str(raw.parent / "out"))
    s3_cfg = make_cfg(s3_raw.uri, s3_store.uri("out"), s3_store.settings)
    local = run_ingest(local_cfg)
    remote = run_ingest(s3_cfg)

    assert local.snapshot_id == remote.snapshot_id
    assert local.token_checksum == remote.token_checksum
    assert [s.model_dump() for s in local.shards] == [s.model_dump() for s in remote.shards]
    for cfg, manifest in ((local_cfg, local), (s3_cfg, remote)):
        snap, reread = published(cfg, manifest.snapshot_id)
        assert reread == manifest
        assert token_array(snap, manifest).size == manifest.counts.tokens
        # Every planted duplicate, PII item, broken and low-quality record is counted, exactly.
        assert [(r.what, r.planted) for r in account(planted, manifest)] == [
            (r.what, r.found) for r in account(planted, manifest)
        ]
        assert manifest.counts.quarantined["oversized"] == 1
        assert surviving_pii(snap, manifest, planted) == []
    docs = list(iter_documents(*published(local_cfg, local.snapshot_id)))
    assert len(docs) == local.counts.documents


def test_crash_before_publish_is_invisible_and_rerun_resumes(corpus, tmp_path, monkeypatch):
    raw, _ = corpus
    cfg = make_cfg(str(raw), str(tmp_path / "out"), executor="local")
    cfg.output.keep_work = True
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(
        faults.ENV, f"ingest.split=raise:{markers}/a,ingest.publish=raise:{markers}/b"
    )

    with pytest.raises(faults.InjectedFault):  # dies on the first split
        run_ingest(cfg)
    with pytest.raises(faults.InjectedFault):  # dies just before publishing
        run_ingest(cfg)
    root = storage.resolve(cfg.output.uri)
    work = storage.list_files(root.join("_work"), "*/stage1/*.json")
    assert work, "finished splits left completion markers"
    ids = [e.relpath.split("/")[0] for e in work]
    with pytest.raises(SnapshotNotFound):
        open_snapshot(root.join("snapshots", ids[0]))

    stamps = {e.relpath: os.stat(e.location.path).st_mtime_ns for e in work}
    manifest = run_ingest(cfg)  # resumes: the finished splits are not redone
    assert manifest.snapshot_id == ids[0]
    after = {e.relpath: os.stat(e.location.path).st_mtime_ns for e in work}
    assert after == stamps
    clean = run_ingest(make_cfg(str(raw), str(tmp_path / "clean"), executor="local"))
    assert (clean.snapshot_id, clean.token_checksum) == (
        manifest.snapshot_id,
        manifest.token_checksum,
    )
    assert not storage.list_files(storage.resolve(str(tmp_path / "clean" / "_work")))
    again = run_ingest(cfg)  # already published: returned as is
    assert again == manifest


def test_new_config_new_snapshot(corpus, tmp_path) -> None:
    raw, _ = corpus
    a = run_ingest(make_cfg(str(raw), str(tmp_path / "o"), executor="local"))
    cfg_b = make_cfg(str(raw), str(tmp_path / "o"), executor="local")
    cfg_b.pack.block_size = 64
    b = run_ingest(cfg_b)
    assert a.snapshot_id != b.snapshot_id and b.counts.tokens == a.counts.tokens


def test_worker_killed_during_tokenization(ray_session, corpus, tmp_path, monkeypatch) -> None:
    raw, _ = corpus
    clean = run_ingest(make_cfg(str(raw), str(tmp_path / "clean"), executor="local"))
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(faults.ENV, f"ingest.tokenize=exit:{marker}")
    chaos = run_ingest(make_cfg(str(raw), str(tmp_path / "chaos")))
    assert marker.exists(), "the fault fired: a tokenizer actor process died"
    assert chaos.counts.documents == clean.counts.documents
    assert chaos.counts.blocks == clean.counts.blocks
    assert chaos.token_checksum == clean.token_checksum


def _compressed_copy(raw: Path, dest: Path, codec: str, suffix: str) -> Path:
    """The corpus with every JSONL and text file compressed (Parquet compresses inside)."""
    import pyarrow as pa

    for path in sorted(p for p in raw.rglob("*") if p.is_file()):
        target = dest / path.relative_to(raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            target.write_bytes(path.read_bytes())
            continue
        with pa.CompressedOutputStream(str(target) + suffix, codec) as out:
            out.write(path.read_bytes())
    return dest


def test_compressed_corpora_ingest_to_the_plain_copy_s_content(corpus, tmp_path, s3_store):
    """gzip and zstd copies of the corpus (as public corpora ship): the same documents, tokens
    and counts as the plain files, on local disk and through S3. A gzipped JSONL file was one
    quarantined text document before."""
    raw, _ = corpus
    plain = run_ingest(make_cfg(str(raw), str(tmp_path / "plain"), executor="local"))
    gz = _compressed_copy(raw, tmp_path / "gz", "gzip", ".gz")
    zst = _compressed_copy(raw, tmp_path / "zst", "zstd", ".zst")
    s3_zst = storage.resolve(s3_store.uri("zst"), s3_store.settings)
    storage.upload_dir(zst, s3_zst)
    runs = [
        run_ingest(make_cfg(str(gz), str(tmp_path / "out-gz"), executor="local")),
        run_ingest(make_cfg(s3_zst.uri, s3_store.uri("out"), s3_store.settings, executor="local")),
    ]
    want = [d for d in iter_documents(*published(make_cfg(str(raw), str(tmp_path / "plain")),
                                                  plain.snapshot_id))]  # fmt: skip
    for manifest, out in zip(runs, (str(tmp_path / "out-gz"), s3_store.uri("out")), strict=True):
        # Blocks differ (a plain file over split_bytes is several splits, a compressed one is
        # one, and packing follows splits); the documents and every count do not.
        assert manifest.counts.model_dump(exclude={"blocks"}) == plain.counts.model_dump(
            exclude={"blocks"}
        )
        cfg = make_cfg(out, out, s3_store.settings if out.startswith("s3://") else None)
        assert list(iter_documents(*published(cfg, manifest.snapshot_id))) == want
