"""Ingest: raw text in object storage -> a versioned, tokenized dataset snapshot.

    python -m jobs.ingest --config jobs/configs/ingest-demo.yaml
    ray job submit --working-dir . -- python -m jobs.ingest --config jobs/configs/ingest-demo.yaml
    flywheel ingest --config jobs/configs/ingest-demo.yaml

The stages live in ``core.data.stages``; this module plans the run, runs the stages with
an executor (Ray Data, or one process for comparison and debugging) and publishes.

The snapshot id hashes the inputs (relative path, size and content hash of every file, so a
local folder and its S3 copy agree), the settings that shape the content, and a pretrained
tokenizer's hash. The same inputs and config therefore give the same id: a finished
snapshot is returned as is, an interrupted one resumes from its completion markers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from core import faults, storage
from core.config import load_config
from core.data.dedup_stage import clean_parts, find_duplicates
from core.data.readers import InputSplit, plan_splits
from core.data.snapshots import open_snapshot
from core.data.stages import SplitProcessor, SplitStats, sum_stats
from core.data.tokenize_stage import TokenizePack, prepare_tokenizer, tokenizer_hash
from core.registry.provenance import code_version
from core.storage import Location
from jobs.runtime import Progress, config_args, init_ray, quiet_ray_data
from schemas.ingest import IngestConfig
from schemas.snapshot import InputFile, ShardInfo, SnapshotCounts, SnapshotManifest, TokenizerInfo

# Bump when a change to the stages changes what they produce for the same config.
PIPELINE_VERSION = 1
# Settings that shape the snapshot's content; where data lives and how it runs do not.
_CONTENT_FIELDS: dict[str, Any] = {
    "input": {"glob", "format", "text_field", "max_record_bytes", "split_bytes"},
    "clean": True,
    "pii": True,
    "dedup": True,
    "tokenizer": {"kind", "vocab_size", "min_frequency", "train_max_docs", "parse_special_tokens"},
    "pack": True,
}


def run_ingest(cfg: IngestConfig, progress: Progress | None = None) -> SnapshotManifest:
    """Run (or resume, or reuse) the ingest described by ``cfg``; returns the manifest."""
    progress = progress or Progress("ingest")
    root, files = discover_inputs(cfg)
    if not files:
        raise FileNotFoundError(f"no input files match {cfg.input.glob!r} under {root.uri}")
    with progress.stage("hash", f"hashing {len(files)} input files under {root.uri}"):
        inputs = hash_inputs(files)
    snapshot_id = compute_snapshot_id(cfg, inputs)
    out = storage.resolve(cfg.output.uri, cfg.storage)
    snap = out.join("snapshots", snapshot_id)
    if storage.exists(snap.join("manifest.json")):
        progress.say(f"snapshot {snapshot_id} already published at {snap.uri}: reusing it")
        return open_snapshot(snap)[1]
    work = out.join("_work", snapshot_id)
    executor = make_executor(cfg, progress)
    manifest = _run_stages(cfg, executor, progress, root, files, inputs, snapshot_id, work, snap)
    if not cfg.output.keep_work:
        storage.delete(work)
    return manifest


def _run_stages(
    cfg: IngestConfig,
    executor: Executor,
    progress: Progress,
    root: Location,
    files: list[storage.FileEntry],
    inputs: list[InputFile],
    snapshot_id: str,
    work: Location,
    snap: Location,
) -> SnapshotManifest:
    splits = plan_splits(files, cfg.input.format, cfg.input.split_bytes)
    msg = f"read, clean, redact, sign: {len(splits)} splits -> {work.uri}"
    with progress.stage("read_clean_redact", msg):
        stats = sum_stats(executor.process_splits(cfg, root, work, splits))
    progress.say(f"{stats.records_in} records read, {stats.documents} documents kept so far")
    with progress.stage("dedup", "finding exact and near duplicates across the dataset"):
        dedup = find_duplicates(cfg, work, executor.map)
    with progress.stage("tokenizer", f"tokenizer: {cfg.tokenizer.kind}"):
        tok = executor.call(prepare_tokenizer, cfg, work)
    parts = clean_parts(work)
    with progress.stage("tokenize_pack", f"tokenize and pack {len(parts)} parts -> {snap.uri}"):
        shards = executor.tokenize_pack(cfg, work, snap, parts)
    faults.maybe_fail("ingest.publish")
    with progress.stage("publish", "publishing the snapshot"):
        return publish(
            cfg, snapshot_id, inputs, stats, dedup, tok, shards, work, snap, progress.timings
        )


# ---------------------------------------------------------------------------------------------
# Planning


def discover_inputs(cfg: IngestConfig) -> tuple[Location, list[storage.FileEntry]]:
    """The input root folder and the files under it that the glob selects."""
    loc = storage.resolve(cfg.input.uri, cfg.storage)
    files = storage.list_files(loc, cfg.input.glob)
    if len(files) == 1 and files[0].location.path == loc.path:  # the uri is a single file
        return loc.parent(), files
    return loc, files


def hash_inputs(files: list[storage.FileEntry]) -> list[InputFile]:
    """Content hashes of the inputs, streamed, a few files at a time (I/O bound)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        digests = list(pool.map(_sha256, [f.location for f in files]))
    return [
        InputFile(path=f.relpath, size=f.size, sha256=d)
        for f, d in zip(files, digests, strict=True)
    ]


def _sha256(loc: Location) -> str:
    h = hashlib.sha256()
    with loc.fs.open_input_stream(loc.path, compression=None) as f:  # the stored bytes
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def content_config(cfg: IngestConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", include=_CONTENT_FIELDS)


def compute_snapshot_id(cfg: IngestConfig, inputs: list[InputFile]) -> str:
    payload = {
        "pipeline_version": PIPELINE_VERSION,
        "inputs": [f.model_dump() for f in inputs],
        "config": content_config(cfg),
        "tokenizer": tokenizer_hash(cfg),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"{cfg.name}-{digest[:16]}"


# ---------------------------------------------------------------------------------------------
# Executors: where the stages run


class Executor:
    """Runs the stages in this process, one unit after another."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress or Progress("ingest")

    def process_splits(
        self, cfg: IngestConfig, root: Location, work: Location, splits: Sequence[InputSplit]
    ) -> list[SplitStats]:
        processor = SplitProcessor(cfg, root, work)
        return [processor(s) for s in self.progress.bar(splits, desc="splits")]

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``fn`` over ``items``, each a unit of work (one LSH band of the dedup)."""
        return [fn(item) for item in items]

    def tokenize_pack(
        self, cfg: IngestConfig, work: Location, snap: Location, parts: Sequence[Location]
    ) -> list[ShardInfo]:
        worker = TokenizePack(cfg, work, snap, faults_spec())
        return [worker(p) for p in self.progress.bar(parts, desc="tokenized parts")]


class RayExecutor(Executor):
    """Runs the stages on Ray: splits as Ray Data tasks, tokenization in an actor pool."""

    def __init__(
        self, address: str | None, progress: Progress | None = None, cpus_per_task: float = 1.0
    ) -> None:
        super().__init__(progress)
        self.cpus_per_task = cpus_per_task
        init_ray(address)
        quiet_ray_data()  # one bar per stage here instead of Ray Data's per operator

    def process_splits(
        self, cfg: IngestConfig, root: Location, work: Location, splits: Sequence[InputSplit]
    ) -> list[SplitStats]:
        import ray.data

        from core.data.stages import split_to_json
        from jobs.ingest_ray import process_split_batch

        items = [{"split": split_to_json(s)} for s in splits]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map_batches(
            process_split_batch,
            batch_size=1,
            fn_kwargs={"cfg": cfg, "root": root, "work": work},
            num_cpus=cfg.execution.num_cpus_per_task,
        )
        rows = self.progress.bar(ds.iter_rows(), total=len(items), desc="splits")
        return [SplitStats(**json.loads(row["stats"])) for row in rows]

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        import ray

        return ray.get(ray.remote(num_cpus=1)(fn).remote(*args))

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """One Ray task per item, side by side across the cluster (``fn`` shipped once)."""
        import ray

        task = ray.remote(num_cpus=self.cpus_per_task)(_apply)
        fn_ref = ray.put(fn)
        return ray.get([task.remote(fn_ref, item) for item in items])

    def tokenize_pack(
        self, cfg: IngestConfig, work: Location, snap: Location, parts: Sequence[Location]
    ) -> list[ShardInfo]:
        import ray.data

        from jobs.ingest_ray import TokenizePackUDF

        ex = cfg.execution
        items = [{"part": p.path} for p in parts]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map_batches(
            TokenizePackUDF,
            batch_size=1,
            fn_constructor_kwargs={
                "cfg": cfg,
                "work": work,
                "snap": snap,
                "fault_spec": faults_spec(),
            },
            compute=ray.data.ActorPoolStrategy(size=min(ex.tokenize_actors, len(items) or 1)),
            num_cpus=ex.cpus_per_tokenize_actor,
        )
        rows = self.progress.bar(ds.iter_rows(), total=len(items), desc="tokenized parts")
        infos = [ShardInfo.model_validate_json(row["shard"]) for row in rows]
        return sorted(infos, key=lambda s: s.path)


def faults_spec() -> str | None:
    """Fault injection travels explicitly: Ray workers may predate the variable."""
    import os

    return os.environ.get(faults.ENV)


def make_executor(cfg: IngestConfig, progress: Progress | None = None) -> Executor:
    if cfg.execution.executor == "local":
        return Executor(progress)
    return RayExecutor(cfg.execution.address, progress, cfg.execution.num_cpus_per_task)


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


# ---------------------------------------------------------------------------------------------
# Publishing


def publish(
    cfg: IngestConfig,
    snapshot_id: str,
    inputs: list[InputFile],
    stats: SplitStats,
    dedup: dict[str, int],
    tok: TokenizerInfo,
    shards: list[ShardInfo],
    work: Location,
    snap: Location,
    timings: dict[str, float],
) -> SnapshotManifest:
    """Copy the tokenizer and quarantine in, write the report, then the manifest (last)."""
    _copy_tree(work.join("tokenizer"), snap.join("tokenizer"))
    quarantine = _copy_tree(work.join("quarantine"), snap.join("quarantine"))
    shards = [s for s in sorted(shards, key=lambda s: s.path) if s.blocks]
    counts = SnapshotCounts(
        files=len(inputs),
        records_in=stats.records_in,
        quarantined=stats.quarantined,
        removed=dict(sorted({**stats.removed, **dedup}.items())),
        pii=stats.pii,
        documents=sum(s.documents for s in shards),
        tokens=sum(s.tokens for s in shards),
        blocks=sum(s.blocks for s in shards),
        chars_in=stats.chars_in,
        chars_out=stats.chars_out,
    )
    manifest = SnapshotManifest(
        snapshot_id=snapshot_id,
        name=cfg.name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        input_uri=cfg.input.uri,
        inputs=inputs,
        config=content_config(cfg),
        config_hash=hashlib.sha256(
            json.dumps(content_config(cfg), sort_keys=True).encode()
        ).hexdigest(),
        code_version=code_version(),
        tokenizer=tok,
        block_size=cfg.pack.block_size,
        counts=counts,
        shards=shards,
        token_checksum=token_checksum(shards),
        quarantine=[f"quarantine/{q}" for q in quarantine],
        parents=list(cfg.parents),
        timings_s=dict(timings),
    )
    storage.write_text(snap.join("report.md"), render_report(manifest))
    storage.write_json(snap.join("manifest.json"), manifest.model_dump(mode="json"))
    return manifest


def _copy_tree(src: Location, dst: Location) -> list[str]:
    names = []
    for entry in storage.list_files(src):
        storage.write_bytes(dst.join(entry.relpath), storage.read_bytes(entry.location))
        names.append(entry.relpath)
    return names


def token_checksum(shards: list[ShardInfo]) -> str:
    h = hashlib.sha256()
    for s in sorted(shards, key=lambda s: s.path):
        h.update(s.sha256.encode())
    return h.hexdigest()


def render_report(m: SnapshotManifest) -> str:
    """A short human-readable report of a snapshot."""
    c = m.counts
    lines = [
        f"# Dataset snapshot {m.snapshot_id}",
        "",
        f"- name: {m.name}; created {m.created_at}; code {m.code_version[:12]}",
        f"- inputs: {c.files} files under {m.input_uri}",
        f"- records read: {c.records_in}; documents kept: {c.documents}",
        f"- characters: {c.chars_in} in, {c.chars_out} out",
        f"- tokens: {c.tokens} in {c.blocks} blocks of {m.block_size} ({len(m.shards)} shards)",
        f"- tokenizer: {m.tokenizer.source} (vocab {m.tokenizer.vocab_size}, "
        f"sha256 {m.tokenizer.sha256[:12]})",
        "",
        _table("Quarantined (unreadable)", c.quarantined),
        _table("Removed (filters and duplicates)", c.removed),
        _table("PII redacted", c.pii),
        _table("Stage timings (s)", m.timings_s),
    ]
    return "\n".join(lines) + "\n"


def _table(title: str, counts: dict[str, Any]) -> str:
    rows = [f"| {k} | {v} |" for k, v in counts.items()] or ["| (none) | 0 |"]
    return "\n".join([f"## {title}", "", "| what | count |", "| --- | --- |", *rows, ""])


def main(argv: Sequence[str] | None = None) -> None:
    args = config_args("Ingest raw text into a dataset snapshot.", argv)
    cfg = load_config(IngestConfig, args.config, args.overrides)
    manifest = run_ingest(cfg)
    print(render_report(manifest))


if __name__ == "__main__":
    main()
