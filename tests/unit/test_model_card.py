"""Model cards: built from the registry's records, stored with the version, kept fresh,
carried by every downloaded folder, printed by the CLI, never failing a registration."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from typer.testing import CliRunner

from cli.main import app
from core import storage
from core.registry import ModelRegistry, card
from schemas.registry import Lineage, SnapshotRef
from tests.tinymodel import make_tiny_model, model_dir

EVIL = "<script>x</script> | y"
TOKENIZER = {"source": "t", "sha256": "t", "vocab_size": 10, "eos_token_id": 0, "pad_token_id": 1}


def corpus_snapshot(root: Path) -> str:
    """A corpus snapshot manifest (what the card reads), without shards."""
    folder = root / "snap-corpus-0001"
    body = {
        "snapshot_id": "snap-corpus-0001",
        "name": "demo",
        "created_at": "2026-01-01T00:00:00+00:00",
        "input_uri": "s3://raw/corpus",
        "inputs": [{"path": "a.txt", "size": 10, "sha256": "0" * 64}],
        "config": {},
        "config_hash": "cfg123",
        "code_version": "abc",
        "tokenizer": TOKENIZER,
        "block_size": 64,
        "counts": {
            "files": 1,
            "records_in": 120,
            "quarantined": {"bad_utf8": 3},
            "removed": {"near_duplicate": 7},
            "pii": {"email": 5, "phone": 2},
            "documents": 110,
            "tokens": 34_000,
            "blocks": 540,
        },
        "shards": [],
        "token_checksum": "x",
    }
    storage.write_json(storage.resolve(str(folder / "manifest.json")), body)
    return str(folder)


def feedback_snapshot(root: Path, principals: int | None = 4) -> str:
    folder = root / "fb-train-01"
    body = {
        "kind": "feedback_snapshot",
        "snapshot_id": "fb-train-01",
        "name": "m-feedback-train",
        "role": "train",
        "created_at": "2026-01-02T00:00:00+00:00",
        "tokenizer": TOKENIZER,
        "counts": {"sft": 6, "preference": 2, "quarantined": {"flood": 9, "outlier": 1}},
        "files": [],
        "parents": [f"{i:032x}" for i in range(17)],
        "corpus_snapshot": "snap-corpus-0001",
        "principals": principals,
    }
    storage.write_json(storage.resolve(str(folder / "manifest.json")), body)
    return str(folder)


def scores(version: str, loss: float, rate: float, spread: float) -> dict:
    return {
        "version": version,
        "feedback_loss": loss,
        "heldout_loss": 2.0,
        "qa": {"accuracy": 0.5},
        "hallucination": {"rate": rate, "n": 20, "fabricated": 3, "abstained": 2, "correct": 15},
        "bias": {
            "categories": {
                "gender": {"spread": spread, "divergence": 0.02, "n": 8},
                "age": {"spread": spread / 2, "divergence": 0.01, "n": 8},
            },
            "max_spread": spread,
        },
    }


def evaluation(candidate: str) -> dict:
    return {
        "kind": "evaluation",
        "feedback_snapshot": "/store/feedback/eval/snapshots/fb-eval-01",
        "heldout_snapshot": "/store/heldout/snapshots/held-01",
        "candidate": scores(candidate, 1.25, 0.15, 0.1),
        "production": scores("m:1", 2.5, 0.35, 0.3),
        "gate": {"passed": True, "reason": f"feedback loss down 50% {EVIL}"},
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """m:1 a tiny HF model on a corpus snapshot; m:2 trained from it on feedback, evaluated
    against it and promoted to production."""
    tmp = tmp_path_factory.mktemp("cards")
    reg = ModelRegistry(str(tmp / "registry"), actor="tester")
    corpus, fb = corpus_snapshot(tmp / "datasets"), feedback_snapshot(tmp / "feedback")
    v1 = reg.register(
        "m",
        make_tiny_model(tmp / "base"),
        lineage=Lineage(
            dataset_snapshots=[SnapshotRef(snapshot_id="snap-corpus-0001", uri=corpus)],
            base_model="/models/smollm2-135m",
        ),
        metrics={"license": "apache-2.0", "mfu": 0.031, "tokens_per_s": 1500.0, "step": 40},
    )
    reg.set_alias("m", "production", 1)
    train_config = {
        "mode": "full",
        "stages": [{"objective": "sft", "steps": 20}, {"objective": "dpo", "steps": 10}],
        "optim": {"lr": 0.05, "max_steps": 30},
        "scaling": {"num_workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1}},
    }
    v2 = reg.register(
        "m",
        model_dir(tmp, "b"),
        lineage=Lineage(
            dataset_snapshots=[SnapshotRef(snapshot_id="fb-train-01", uri=fb)],
            parent="m:1",
            training_config=train_config,
            training_config_hash="hash-abc",
        ),
        metrics={"mfu": 0.0123, "workers": 2},
        description=f"feedback fine-tune {EVIL}",
    )
    registered_card = reg.card("m:2")
    reg.add_eval_report(v2.ref, evaluation(v2.ref))
    reg.audit.append("approval.request", "m:2", {"note": "gate passed", "by": "loop"})
    reg.audit.append("approval.approve", "m:2", {"note": "looks good", "by": "alice"})
    reg.set_alias("m", "production", 2, reason="approved by alice")
    return {"reg": reg, "tmp": tmp, "v1": v1, "v2": v2, "registered": registered_card}


def test_the_stored_card_parses_as_a_hugging_face_card(world: dict) -> None:
    reg = world["reg"]
    stored = reg.card_location(reg.get("m:2"))
    text = storage.read_bytes(stored).decode()
    parsed = ModelCard(text)
    assert parsed.data.base_model == "m:1"
    assert parsed.data.datasets == ["fb-train-01"]
    assert parsed.data.license == "other" and "No license was recorded" in text
    assert {"flywheel", "hf", "alias-production"} <= set(parsed.data.tags)
    name, results = model_index_to_eval_results(parsed.data.to_dict()["model-index"])
    assert name == "m:2"
    metrics = {(r.dataset_name, r.metric_name): r.metric_value for r in results}
    assert metrics[("feedback snapshot fb-eval-01", "Loss on held-out corrections")] == 1.25
    assert metrics[("heldout snapshot held-01", "Loss on held-out training data")] == 2.0
    assert metrics[("hallucination probes", "Hallucination rate")] == 0.15
    assert metrics[("bias probes", "Largest spread across categories")] == 0.1
    assert all(r.task_type == "text-generation" for r in results)
    base = ModelCard(reg.card("m:1"))
    assert base.data.license == "apache-2.0" and base.data.base_model == "/models/smollm2-135m"
    assert base.data.datasets == ["snap-corpus-0001"] and "model-index" not in base.data.to_dict()


def test_the_card_tells_data_training_evaluation_and_approvals(world: dict) -> None:
    text = world["reg"].card("m:2")
    # training data and feedback lineage, from the snapshot manifest
    assert "### Snapshot `fb-train-01`" in text and "6 corrections, 2 preference pairs" in text
    assert "17 events from 4 distinct principals" in text
    assert "quarantined by reason: flood 9, outlier 1" in text
    # training procedure: what was recorded, and "not recorded" for what was not
    assert "sft (20 steps), dpo (10 steps)" in text and "hash-abc" in text
    assert "2 CPU workers" in text and "**MFU**: 1.23%" in text
    assert "**Tokens**: not recorded" in text
    # the evaluation against the parent, the gate's reason escaped, bias and hallucination
    assert "Candidate m:2 against its parent m:1" in text and "Gate **passed**" in text
    assert "feedback loss down 50% &lt;script&gt;x&lt;/script&gt; \\| y." in text
    assert "<script" not in text
    assert "| rate | 0.15 | 0.35 |" in text and "| fabricated | 3 | 3 |" in text
    assert "| gender | 0.1 | 0.3 | 0.02 | 0.02 | 8 |" in text
    # approvals and the promotion, from the audit log
    assert "| approval.approve | alice | looks good | tester |" in text
    assert "| m@production | 1 | 2 | approved by alice | tester |" in text
    # the corpus snapshot of the parent: quarantine and PII counts
    base = world["reg"].card("m:1")
    assert "Quarantined (unreadable), by reason: bad_utf8 3" in base
    assert "PII redactions, by type: email 5, phone 2" in base
    assert "34,000 tokens" in base and "| m@production | 1 | 2 |" in base


def test_the_card_is_refreshed_by_reports_and_moves(world: dict) -> None:
    registered = world["registered"]
    assert "No evaluation report" in registered and "No alias has pointed" in registered
    assert "model-index" not in ModelCard(registered).data.to_dict()
    reg = world["reg"]
    assert reg.card("m:2") != registered
    reg.set_alias("m", "canary", 2, reason="canary check")
    assert "| m@canary | unset | 2 | canary check |" in reg.card("m:2")


def test_download_carries_the_card_and_loads(world: dict) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reg, tmp = world["reg"], world["tmp"]
    folder = reg.download("m:1", tmp / "dl-1")
    assert (folder / "README.md").read_text() == reg.card("m:1")
    AutoModelForCausalLM.from_pretrained(folder)  # a README.md beside the weights is ignored
    AutoTokenizer.from_pretrained(folder)
    v1 = reg.get("m:1")
    assert v1.files == world["v1"].files and v1.content_sha256 == world["v1"].content_sha256
    recorded = {f.path: f.sha256 for f in v1.files}
    assert "README.md" not in recorded
    for path, digest in recorded.items():
        assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == digest


def test_cli_prints_the_card(world: dict) -> None:
    uri = str(world["reg"].root.path)
    result = CliRunner().invoke(app, ["models", "card", "m@production", "--registry", uri])
    assert result.exit_code == 0, result.output
    assert result.output == world["reg"].card("m:2")
    missing = CliRunner().invoke(app, ["models", "card", "m:9", "--registry", uri])
    assert missing.exit_code == 2 and "not registered" in missing.output


def test_a_failing_card_never_fails_a_registration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(registry: ModelRegistry, ref: str) -> str:
        raise RuntimeError("card builder broke")

    monkeypatch.setattr(card, "build_card", broken)
    reg = ModelRegistry(str(tmp_path / "registry"), actor="tester")
    v = reg.register("m", model_dir(tmp_path, "a"))
    assert reg.get("m:1").content_sha256 == v.content_sha256
    assert reg.add_eval_report("m:1", {"kind": "evaluation"}) == 1
    assert reg.set_alias("m", "production", 1).version == 1
    assert "could not refresh the model card of m:1" in caplog.text
    assert not storage.exists(reg.card_location(v))
    folder = reg.download("m:1", tmp_path / "dl")
    assert (folder / "weights.bin").exists() and not (folder / "README.md").exists()
    monkeypatch.undo()
    assert reg.card("m:1").startswith("---\n") and storage.exists(reg.card_location(v))


def test_unreadable_snapshots_and_unrecorded_principals(tmp_path: Path) -> None:
    reg = ModelRegistry(str(tmp_path / "registry"), actor="tester")
    fb = feedback_snapshot(tmp_path / "fb", principals=None)
    snaps = [
        SnapshotRef(snapshot_id="fb-train-01", uri=fb),
        SnapshotRef(snapshot_id="gone", uri=str(tmp_path / "nowhere")),
    ]
    reg.register("m", model_dir(tmp_path, "a"), lineage=Lineage(dataset_snapshots=snaps))
    text = reg.card("m:1")
    assert "17 events from not recorded distinct principals" in text
    assert f"Not readable at {tmp_path / 'nowhere'}" in text
    assert ModelCard(text).data.datasets == ["fb-train-01", "gone"]
    assert "**Objective(s)**: not recorded" in text and "**Hardware**: not recorded" in text
    standalone = {"kind": "evaluation", "candidate": scores("m:1", 1.0, 0.2, 0.1), "gate": None}
    reg.add_eval_report("m:1", standalone)
    text = reg.card("m:1")
    assert (
        "m:1 scored alone: no parent, no gate." in text and "| rate | 0.2 | not recorded |" in text
    )


def test_the_report_shows_governance(world: dict) -> None:
    from core.loop.statelog import StateLog
    from report.page import build_report

    reg, tmp = world["reg"], world["tmp"]
    reg.add_eval_report("m:1", {"kind": "evaluation", "candidate": scores("m:1", 1.0, 0.4, 0.2)})
    state = {
        "phase": "awaiting_approval",
        "current": {"candidate": "m:3", "gate": {"reason": "ok"}},
    }
    StateLog(storage.resolve(str(tmp / "loop" / "controller" / "states"))).claim(state)
    html = build_report(str(reg.root.path), str(tmp / "events"), str(tmp / "loop"))
    section = re.search(r'<section id="governance">.*?</section>', html, re.S).group(0)
    assert "The loop awaits approval of m:3" in section
    assert "<td>approval.approve</td><td>m:2</td><td>alice</td><td>looks good</td>" in section
    assert re.search(r'<svg[^>]*data-plot="governance-trend"', section)
    assert "<title>hallucination rate: 0.15</title>" in section  # m:2's rate, on its marker
    assert '<td>m:2</td><td>m:1</td><td class="num">0.15</td>' in section
    summaries = re.findall(r"<summary>(.*?)</summary>", section)
    assert summaries[0].startswith("m:2 · ") and "production" in summaries[0]
    assert summaries[1].startswith("m:1: model card")
    assert "Candidate m:2 against its parent m:1" in section and "<script" not in section
    assert "No rated answers since the last feedback snapshot" in section


def test_the_report_shows_the_live_hallucination_signal(world: dict) -> None:
    from report.page import build_report

    reg, tmp = world["reg"], world["tmp"]
    rating = {"prompt": "Capital of Tarn?", "model_version": "m:2", "user_text": None}
    ratings = [
        rating | {"completion": "It is Vell.", "rating": 1, "event_ids": ["s1", "f1"]},
        rating | {"completion": "I don't know.", "rating": 2, "event_ids": ["s2", "f2"]},
        rating | {"completion": "Vell, surely.", "rating": 5, "event_ids": ["s3", "f3"]},
    ]
    correction = {"prompt": "Capital of Tarn?", "answer": "Osk.", "model_version": "m:2"}
    candidates = [
        correction | {"event_ids": ["s1", "f1"]},
        correction | {"event_ids": ["s2", "f2"]},
    ]
    state = {"ratings": ratings, "candidates": candidates}
    storage.write_json(storage.resolve(str(tmp / "loop" / "consumer" / "state.json")), state)
    html = build_report(str(reg.root.path), str(tmp / "events"), str(tmp / "loop"))
    section = re.search(r'<section id="governance">.*?</section>', html, re.S).group(0)
    # Three rated; one hedged; of the two corrected, only the confident one counts.
    row = re.search(r"<tr><td>m:2</td>(.*?)</tr>", section.split("Live, since")[1]).group(1)
    assert re.findall(r">([^<]+)</td>", row) == ["3", "0.3333", "1", "0.3333"], row


def test_a_published_feedback_snapshot_counts_its_principals(world: dict, tmp_path: Path) -> None:
    from core.data.feedback import open_feedback
    from jobs.feedback_snapshot import publish_feedback_snapshot
    from schemas.loop import CuratedExample, FeedbackSnapshotConfig, LoopConfig
    from tests.tinymodel import loop_settings

    cfg = LoopConfig.model_validate(loop_settings(tmp_path))
    reg = ModelRegistry(cfg.registry_uri, actor="tester")
    reg.register("m", world["tmp"] / "base")
    reg.set_alias("m", "production", 1)
    users = [["alice"], ["alice", "bob"], [], []]  # the two anonymous count as one principal
    examples = [
        CuratedExample(
            prompt=f"Q{i}?", answer=f"A{i}", event_ids=[f"e{i}"], users=u, key=f"{i:016x}"
        )
        for i, u in enumerate(users)
    ]
    result = publish_feedback_snapshot(FeedbackSnapshotConfig(loop=cfg, upto=4, examples=examples))
    _, manifest = open_feedback(result["train_uri"])
    assert manifest.principals == 3 and manifest.counts.sft == 4
