"""The operator's report: every section drawn from a small store, escaped, robust to absence."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import COMMANDS, app
from core import storage
from core.events import EventLog
from core.loop.statelog import StateLog
from core.registry import ModelRegistry
from report.charts import line_chart
from report.lineage import layout, lineage_graph
from report.numbers import buckets, percentile, round_edges
from report.page import build_report, write_report
from schemas.events import Feedback, ServedOutput
from schemas.registry import Lineage, SnapshotRef

EVIL = "<script>alert('x')</script>"
PLOTS = [
    "training-loss",
    "training-throughput",
    "training-mfu",
    "eval-feedback_loss",
    "eval-heldout_loss",
    "eval-qa",
    "feedback-rating",
    "feedback-acceptance",
    "feedback-volume",
    "feedback-curation",
    "drift",
    "version-counts",
    "version-acceptance",
    "serving-latency",
    "serving-throughput",
    "serving-latency-hist",
    "lineage",
]


def _snapshot(root: Path, snapshot_id: str, files: list[str], parents: list[str]) -> str:
    """A snapshot manifest (all lineage reads), without shards."""
    folder = root / snapshot_id
    storage.write_json(
        storage.resolve(str(folder / "manifest.json")),
        {
            "snapshot_id": snapshot_id,
            "name": "demo",
            "created_at": "2026-01-01T00:00:00+00:00",
            "input_uri": str(root / "raw"),
            "inputs": [
                {"path": name, "size": 100 + i, "sha256": f"{i:064x}"}
                for i, name in enumerate(files)
            ],
            "config": {},
            "config_hash": "c",
            "code_version": "abc",
            "tokenizer": {
                "source": "trained",
                "sha256": "t",
                "vocab_size": 10,
                "eos_token_id": 0,
                "pad_token_id": 1,
            },
            "block_size": 8,
            "counts": {"documents": 12, "tokens": 3400},
            "shards": [],
            "token_checksum": "x",
            "parents": parents,
        },
    )
    return str(folder)


def _model_dir(tmp_path: Path, tag: str) -> Path:
    folder = tmp_path / "src" / tag
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(tag.encode() * 10)
    return folder


def _curve(steps: int, start: float) -> dict:
    points = [{"step": s, "loss": start / (1 + s / 5), "lr": 1e-3} for s in range(1, steps + 1)]
    return {"curve": points, "tokens_per_s": 1500.0 + start * 100, "mfu": 0.02 + start / 1000}


def _eval(candidate: str, loss: float, passed: bool) -> dict:
    return {
        "kind": "evaluation",
        "candidate": {
            "version": candidate,
            "feedback_loss": loss,
            "heldout_loss": 2.1,
            "qa": {"accuracy": 0.6},
        },
        "production": {
            "version": "m:1",
            "feedback_loss": 2.5,
            "heldout_loss": 2.0,
            "qa": {"accuracy": 0.5},
        },
        "gate": {"passed": passed, "reason": f"margin check {EVIL}"},
    }


def build_store(tmp_path: Path) -> dict[str, str]:
    """A registry with three versions, an event log and loop state: what a demo leaves."""
    uris = {k: str(tmp_path / k) for k in ("registry", "events", "loop")}
    corpus = [f"corpus/part-{i:02d}.txt" for i in range(8)]
    raw_snap = _snapshot(tmp_path / "datasets", "snap-base-0001", corpus, [])
    events = [f"{i:032x}" for i in range(40)]
    fb_snap = _snapshot(
        tmp_path / "feedback",
        "snap-feedback-01",
        ["examples.jsonl"],
        [f"feedback-events:{tmp_path}/fb", *events],
    )
    reg = ModelRegistry(uris["registry"], actor="t")
    reg.register(
        "m",
        _model_dir(tmp_path, "a"),
        lineage=Lineage(
            dataset_snapshots=[SnapshotRef(snapshot_id="snap-base-0001", uri=raw_snap)],
            base_model="/models/smollm2-135m",
        ),
        metrics=_curve(40, 4.0),
        description=f"base {EVIL}",
    )
    for tag, loss, passed, decision in (
        ("b", 1.9, True, "promoted"),
        ("c", 2.7, False, "rejected"),
    ):
        v = reg.register(
            "m",
            _model_dir(tmp_path, tag),
            format="lora",
            base="m:1",
            lineage=Lineage(
                dataset_snapshots=[SnapshotRef(snapshot_id="snap-feedback-01", uri=fb_snap)],
                parent="m:1",
            ),
            metrics=_curve(12, loss + 0.8),
        )
        reg.add_eval_report(v.ref, _eval(v.ref, loss, passed))
        reg.add_eval_report(
            v.ref, {"kind": "loop_decision", "decision": decision, "reason": EVIL, "cycle": 1}
        )
    reg.set_alias("m", "production", 2)
    _events(uris["events"])
    _loop_state(uris["loop"])
    return uris


def _events(uri: str) -> None:
    t0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
    served, feedback = [], []
    for i in range(120):
        at = (t0 + timedelta(seconds=60 * i)).isoformat()
        served.append(
            ServedOutput(
                response_id=f"r{i}",
                model="m",
                model_version=f"m:{1 + (i >= 60)}",
                endpoint="completions",
                prompt=EVIL,
                completion="ok",
                prompt_tokens=5,
                completion_tokens=20 + i % 7,
                finish_reason="stop",
                latency_ms=80 + (i * 37) % 300,
                ttft_ms=20 + i % 11,
                user=EVIL,
                created_at=at,
            )
        )
        if i % 3:
            feedback.append(
                Feedback(
                    response_id=f"r{i}",
                    rating=1 + (i * 7) % 5 if i < 60 else 3 + i % 3,
                    correction="better" if i % 4 == 0 else None,
                    created_at=at,
                )
            )
    log = EventLog(uri)
    log.append_segment(served)
    log.append_segment(feedback)


def _loop_state(uri: str) -> None:
    root = storage.resolve(uri)
    history = [
        {
            "candidate": "m:2",
            "outcome": "promoted",
            "outcome_reason": "ok",
            "examples": 30,
            "quarantined": 4,
            "triggered_at": 1.0,
            "evaluated_at": 2.0,
        },
        {
            "candidate": "m:3",
            "outcome": "rejected",
            "outcome_reason": EVIL,
            "examples": 12,
            "quarantined": 7,
            "triggered_at": 3.0,
            "evaluated_at": 4.0,
        },
    ]
    StateLog(root.join("controller", "states")).claim(
        {"drift": {"score": 0.21, "words_js": 0.3, "length_shift": 0.12}, "history": history},
    )
    stats = {
        version: {
            "requests": 60 + 9 * i,
            "rated": 40 + 5 * i,
            "rating_sum": 120 + 30 * i,
            "accepted": 18 + 9 * i,
            "corrections": 9 - 3 * i,
        }
        for i, version in enumerate(("m:1", "m:2", EVIL))
    }
    storage.write_json(root.join("consumer", "state.json"), {"stats": stats})


def _svg(html: str, name: str) -> str:
    match = re.search(rf'<svg[^>]*data-plot="{re.escape(name)}".*?</svg>', html, re.S)
    assert match, f"no {name} plot"
    return match.group(0)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def html(store: dict[str, str]) -> str:
    return build_report(store["registry"], store["events"], store["loop"])


def test_every_section_is_drawn(html: str) -> None:
    sections = ("training", "evaluation", "governance", "feedback", "drift", "serving")
    for section in (*sections, "lineage"):
        assert f'<section id="{section}">' in html
    assert sorted(re.findall(r'data-plot="([^"]+)"', html)) == sorted(PLOTS)
    for name in PLOTS:
        assert re.search(r"<(path|rect|circle)\b", _svg(html, name)), name
    assert "production → m:2" in html and "no data" not in html.lower()
    evaluation = _svg(html, "eval-feedback_loss")
    assert "m:2 vs m:1" in evaluation and "promoted" in evaluation and "rejected" in evaluation
    assert "m:1" in _svg(html, "feedback-rating") and "m:2" in _svg(html, "feedback-rating")
    # hover titles: on each bar, on each marker of a sparse line, on each histogram bin
    assert "<title>m:2 vs m:1 candidate: 1.9</title>" in evaluation
    assert _svg(html, "training-loss").count("<title>m:2: ") == 12
    assert re.search(r"<title>\d+–\d+: \d+</title>", _svg(html, "serving-latency-hist"))
    # the inline SVGs share the page's id space: no id twice, every reference resolves
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert set(re.findall(r'(?:url\(#|href="#)([^)"]+)', html)) <= set(ids)


def test_lineage_layers_and_summaries(store: dict[str, str], html: str) -> None:
    lineage = _svg(html, "lineage")
    assert "40 feedback events" in lineage and "+3 more raw files" in lineage
    # nodes: 5 raw files + "more" + examples.jsonl + feedback + 2 snapshots + 3 versions + base
    # edges: 8 into snapshots, 2 into m:1 (snapshot, base), 2 each into m:2 and m:3
    assert lineage.count("<g>") == 14 and lineage.count("marker-end") == 14
    reg = ModelRegistry(store["registry"])
    columns = {k: c for k, (c, _) in layout(lineage_graph([reg.lineage("m:3")])).items()}
    raw = columns["raw:corpus/part-00.txt:100 bytes, sha256 000000000000"]
    snapshot, base = columns["snapshot:snap-base-0001:"], columns["version:m:1:"]
    assert raw < snapshot < base < columns["version:m:3:"]
    assert columns["feedback:snapshot:snap-feedback-01:"] < columns["snapshot:snap-feedback-01:"]


def test_strings_are_escaped_and_nothing_is_fetched(html: str) -> None:
    assert "<script" not in html
    assert "&lt;script&gt;" in html
    assert "&lt;script&gt;" in _svg(html, "version-counts")  # a version label, drawn as text
    assert not re.search(r'(src|href)="(?!#)|@import|url\((?!#)', html)


def test_empty_and_missing_sources_render(tmp_path: Path) -> None:
    html = build_report(str(tmp_path / "none"), str(tmp_path / "nothing"), None)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "no model yet" in html and "No loop state yet" in html
    assert "<svg" not in html


def test_partial_sources_render(tmp_path: Path) -> None:
    """A version with a diverged curve, one served response, a rating of something else."""
    curve = [{"step": 1, "loss": float("nan")}, {"step": 2, "loss": 3.0}, {"step": 3}]
    reg = ModelRegistry(str(tmp_path / "registry"), actor="t")
    reg.register("m", _model_dir(tmp_path, "a"), metrics={"curve": curve, "mfu": None})
    storage.write_json(storage.resolve(str(tmp_path / "loop/consumer/state.json")), {"stats": {}})
    served = ServedOutput(
        response_id="r",
        model="m",
        model_version="m:1",
        endpoint="completions",
        prompt="p",
        completion="c",
        prompt_tokens=1,
        completion_tokens=3,
        finish_reason="stop",
        latency_ms=9,
    )
    EventLog(str(tmp_path / "events")).append_segment([served, Feedback(response_id="x", rating=5)])
    html = build_report(*(str(tmp_path / k) for k in ("registry", "events", "loop")))
    assert "matches the 1 ratings" in html and "nan" not in _svg(html, "training-loss").lower()
    assert 'data-plot="training-mfu"' not in html
    for name in (
        "training-loss",
        "serving-latency",
        "serving-throughput",
        "serving-latency-hist",
        "lineage",
    ):
        assert re.search(r"<(path|rect|circle)\b", _svg(html, name)), name
    assert "No model &#39;nope&#39; in the registry" in build_report(
        str(tmp_path / "registry"), str(tmp_path / "events"), None, model="nope"
    )


def test_write_report(tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    write_report(str(out), "<!DOCTYPE html><html></html>")
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_helpers() -> None:
    assert round_edges(0.3, 4.2) == [0, 1, 2, 3, 4, 5]
    assert round_edges(2, 2)[0] < 2 < round_edges(2, 2)[-1]
    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile([7], 95) == 7
    start, width = buckets([0.0, 3600.0])
    assert width == 300 and start == 0
    assert lineage_graph([]).nodes == {}


def test_charts_are_deterministic() -> None:
    series = {"a": [(1.0, 2.0), (2.0, 1.5)], EVIL: [(1.0, 3.0), (3.0, 1.0)]}
    first = line_chart("c", "Chart", series, x_label="x", y_label="y")
    assert first == line_chart("c", "Chart", series, x_label="x", y_label="y")
    assert first.startswith('<svg class="plot" data-plot="c"') and "<script" not in first
    assert "&lt;script&gt;" in first and "<metadata>" not in first


def test_cli_report(tmp_path: Path) -> None:
    runner = CliRunner()
    assert "report" in COMMANDS
    result = runner.invoke(app, ["report", "--help"])
    assert result.exit_code == 0 and "HTML" in result.output
    uris = build_store(tmp_path)
    out = tmp_path / "r.html"
    args = ["report", "--registry", uris["registry"], "--events", uris["events"]]
    result = runner.invoke(app, [*args, "--loop", uris["loop"], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and 'data-plot="lineage"' in out.read_text()
