"""Erasure and retention without Ray: a user's events, feedback snapshot rows, consumer state,
quarantine and job files go; the other user's stay where they were; reruns change nothing."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from actors.feedback import FeedbackConsumer
from cli.data import pseudonyms
from cli.main import app
from core import storage
from core.data.feedback import open_feedback, read_rows
from core.erasure import ErasureLedger
from core.events import EventLog
from core.loop.erasure import apply_retention
from core.loop.recipes import publish_config
from core.registry import ModelRegistry
from jobs.feedback_snapshot import publish_feedback_snapshot
from report.page import build_report
from schemas.events import Erased, Feedback, ServedOutput
from schemas.loop import LoopConfig
from schemas.registry import Lineage, SnapshotRef
from serve_apps.principals import Pseudonyms
from tests.tinymodel import loop_settings, make_tiny_model, model_dir

SECRET = "erasure-test-pseudonym-key"
ENV = {"FLYWHEEL_PSEUDONYM_KEY": SECRET, "FLYWHEEL_API_KEYS": "app:sekrit-key-1"}
MARK = "zebraquux"  # in every prompt and correction of alice's, nowhere else
OLD, NEW = "2025-01-01T00:00:00.000+00:00", "2026-03-01T00:00:00.000+00:00"
runner = CliRunner()


def pseud(user: str) -> str:
    p = Pseudonyms(SECRET.encode())("user", user, "app")
    assert p is not None
    return p


def served(rid: str, user: str, prompt: str, completion: str, at: str = NEW) -> ServedOutput:
    p = pseud(user)
    return ServedOutput(
        response_id=rid,
        model="m",
        model_version="m:1",
        endpoint="chat.completions",
        prompt=prompt,
        user_text=prompt,
        completion=completion,
        prompt_tokens=1,
        completion_tokens=1,
        finish_reason="stop",
        latency_ms=1.0,
        user=p,
        key_id="app",
        principal=f"app/{p}",
        split=True,
        created_at=at,
    )


def rate(rid: str, user: str, rating: int, correction: str | None = None, at: str = NEW):
    p = pseud(user)
    return Feedback(
        response_id=rid,
        rating=rating,
        correction=correction,
        user=p,
        key_id="app",
        principal=f"app/{p}",
        created_at=at,
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "base")


def first_segments() -> list[list[Any]]:
    return [
        [served("b0", "bob", "Old question?", "Old answer.", OLD), rate("b0", "bob", 5, at=OLD)],
        [
            served("a1", "alice", f"Where does the {MARK} live?", "In the sea."),
            served("b1", "bob", "What colour is the sky?", "Green."),
            rate("a1", "alice", 1, f"The {MARK} lives in the hills."),
            rate("b1", "bob", 1, "The sky is blue."),
            served("b2", "bob", "How many legs has a cat?", "Four."),
            rate("b2", "alice", 5),  # alice rates bob's answer: her feedback goes, his answer stays
            served("a2", "alice", f"What does a {MARK} eat?", f"A {MARK} eats grass."),
            rate("a2", "alice", 5),
            served("a4", "alice", "Links?", "No."),
            rate("a4", "alice", 1, f"see http://{MARK}.example.com now"),  # quarantined: link
            served("b3", "bob", "Capital of France?", "Paris."),
            rate("b3", "bob", 5),
        ],
    ]


def build_world(root: Path, base: Path) -> dict[str, Any]:
    """Events of alice and bob, a consumer, a published feedback snapshot, versions trained on
    it, then more events the consumer holds unpublished."""
    cfg_body = loop_settings(root)
    config = root / "loop.yaml"
    config.write_text(yaml.safe_dump(cfg_body))
    cfg = LoopConfig.model_validate(cfg_body)
    registry = ModelRegistry(cfg.registry_uri, actor="t")
    registry.register("m", base)
    registry.set_alias("m", "production", 1)
    log = EventLog(cfg.event_log_uri)
    for segment in first_segments():
        log.append_segment(segment)
    consumer = FeedbackConsumer(cfg.model_dump(mode="json"))
    assert consumer.step() == 14
    job, submission = publish_config(cfg, consumer.pending_examples(), None)
    storage.write_json(
        storage.resolve(cfg.loop_uri).join("jobs", submission, "publishing.json"),
        job.model_dump(mode="json"),
    )
    result = publish_feedback_snapshot(job)
    consumer.mark_published(result["upto"], result["ratings_upto"])
    refs = [
        SnapshotRef(snapshot_id=result[f"{r}_snapshot_id"], uri=result[f"{r}_uri"])
        for r in ("train", "eval")
    ]
    v2 = registry.register(
        "m", model_dir(root, "2"), lineage=Lineage(dataset_snapshots=refs, parent="m:1")
    )
    v3 = registry.register("m", model_dir(root, "3"), lineage=Lineage(parent=v2.ref))
    log.append_segment(
        [
            served("a3", "alice", f"Is the {MARK} real?", "No."),
            rate("a3", "alice", 1, f"Yes, the {MARK} is real."),
            served("b4", "bob", "Is water wet?", "No."),
            rate("b4", "bob", 1, "Water is wet."),
        ]
    )
    assert consumer.step() == 4
    return {"cfg": cfg, "config": config, "job": job, "consumer": consumer, "v": [v2, v3]}


def files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def holds_alice(data: bytes) -> bool:
    low = data.lower()
    return any(s.encode() in low for s in (MARK, "alice", pseud("alice")))


def positions(log: EventLog) -> dict[str, tuple[int, int]]:
    """Event id -> (segment, line) of every event still readable."""
    out = {}
    for number in log.segment_numbers():
        for i, e in enumerate(log.read_lines(number)):
            if not isinstance(e, Erased):
                out[e.event_id] = (number, i)
    return out


def erase(config: Path, *args: str) -> Any:
    return runner.invoke(app, ["data", "erase", "--config", str(config), *args], env=ENV)


def test_erase_removes_a_user_everywhere_and_keeps_the_rest(tmp_path: Path, base: Path) -> None:
    w = build_world(tmp_path, base)
    cfg, log = w["cfg"], EventLog(w["cfg"].event_log_uri)
    alice_before = {e.event_id for _, e in log.read() if holds_alice(e.model_dump_json().encode())}
    bob_before = {k: v for k, v in positions(log).items() if k not in alice_before}
    result = erase(w["config"], "--user", "alice")
    assert result.exit_code == 0, result.output
    assert "m:2" in result.output and "m:3" in result.output  # m:3 inherits m:2's weights
    assert "m:1" not in result.output

    # No byte of the event log, loop root (snapshots, parquet, state, quarantine, job configs)
    # or registry holds her id, pseudonym or text; the ledger and audit hold only hashes.
    for root in (tmp_path / "events", tmp_path / "loop", tmp_path / "registry"):
        leaks = [p for p in root.rglob("*") if p.is_file() and holds_alice(p.read_bytes())]
        assert leaks == []
    html = build_report(cfg.registry_uri, cfg.event_log_uri, cfg.loop_uri, model="m")
    assert not holds_alice(html.encode())

    # Bob's events are where they were; hers are tombstones in their own lines.
    assert positions(log) == bob_before
    assert "b2" in {e.response_id for _, e in log.read() if isinstance(e, ServedOutput)}
    lines = [e for n in log.segment_numbers() for e in log.read_lines(n)]
    assert {e.event_id for e in lines if isinstance(e, Erased)} == alice_before

    # The snapshots lost her rows (their counts and parents follow); bob's corrections stay.
    erased = set(ErasureLedger(log).records()[0].event_ids)
    bob_rows = 0
    for manifest_path in (tmp_path / "loop" / "feedback").rglob("manifest.json"):
        loc, m = open_feedback(str(manifest_path.parent))
        rows = {f.kind: read_rows(loc, m, f.kind) for f in m.files}
        assert not erased & set(m.parents)
        assert m.counts.sft == len(rows.get("sft", []))
        assert sum(f.rows for f in m.files) == sum(len(r) for r in rows.values())
        bob_rows += sum(len(r) for r in rows.values())
    assert bob_rows > 0

    entries = ModelRegistry(cfg.registry_uri).audit.entries()
    erase_entry = next(e for e in entries if e.action == "data.erase")
    assert erase_entry.details["versions_affected"] == ["m:2", "m:3"]
    assert erase_entry.details["events"] == len(erased) > 0
    assert ModelRegistry(cfg.registry_uri).audit.verify() == []


def test_rerun_is_a_no_op(tmp_path: Path, base: Path) -> None:
    w = build_world(tmp_path, base)
    assert erase(w["config"], "--user", "alice").exit_code == 0
    before = files(tmp_path)
    again = erase(w["config"], "--pseudonym", pseud("alice"))
    assert again.exit_code == 0, again.output
    assert "already erased" in again.output
    assert files(tmp_path) == before


def test_running_consumer_and_later_snapshots_exclude_the_user(tmp_path: Path, base: Path) -> None:
    w = build_world(tmp_path, base)
    consumer, cfg = w["consumer"], w["cfg"]
    assert any(MARK in e["prompt"] for e in consumer.pending_examples()["examples"])
    assert erase(w["config"], "--user", "alice").exit_code == 0
    # The consumer kept running with her entries in memory: its next poll forgets them.
    consumer.step()
    pending = consumer.pending_examples()
    assert not holds_alice(str(pending).encode())
    assert [e["answer"] for e in pending["examples"]] == ["Water is wet."]
    state = tmp_path / "loop" / "consumer" / "state.json"
    assert not holds_alice(state.read_bytes())
    # A new snapshot from the consumer has only bob's; so has the job frozen before the erase.
    job, _ = publish_config(cfg, pending, None)
    for j in (job, w["job"]):
        out = publish_feedback_snapshot(j)
        for r in ("train", "eval"):
            folder = Path(out[f"{r}_uri"])
            assert not any(holds_alice(p.read_bytes()) for p in folder.rglob("*") if p.is_file())
    assert not holds_alice(state.read_bytes())


def test_retention_tombstones_old_events_and_keeps_offsets(tmp_path: Path, base: Path) -> None:
    w = build_world(tmp_path, base)
    cfg, log = w["cfg"], EventLog(w["cfg"].event_log_uri)
    before = positions(log)
    old = {e.event_id for _, e in log.read() if e.created_at == OLD}
    now = datetime(2025, 12, 1, tzinfo=UTC)  # 180 days: the 2025-01-01 events are past it
    assert apply_retention(cfg, now=now) == {1: 2}
    assert positions(log) == {k: v for k, v in before.items() if k not in old}
    assert all(isinstance(e, Erased) for e in log.read_lines(1))
    assert (
        b"Old question" not in (tmp_path / "events" / "segments" / "0000000001.jsonl").read_bytes()
    )
    assert apply_retention(cfg, now=now) == {}  # a rerun changes nothing
    entries = [
        e for e in ModelRegistry(cfg.registry_uri).audit.entries() if e.action == "data.retention"
    ]
    assert len(entries) == 1 and entries[0].details["events"] == 2
    # A consumer from the start reads past the tombstones: 18 events, 2 compacted.
    fresh = cfg.model_dump(mode="json") | {"loop_uri": str(tmp_path / "fresh")}
    assert FeedbackConsumer(fresh).step() == 16
    result = runner.invoke(app, ["data", "compact", "--config", str(w["config"])])
    assert result.exit_code == 0 and "events compacted" in result.output


def test_tombstones_keep_lines_and_reads_skip_them(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path / "log"))
    log.append_segment([served("r1", "bob", "a", "b"), served("r2", "bob", "c", "d")])
    first, second = log.read_lines(1)
    with pytest.raises(ValueError, match="keep every line"):
        log.replace_segment(1, [first])
    log.replace_segment(1, [Erased(event_id=first.event_id, erasure="x"), second])
    assert [(o.to_json(), e.response_id) for o, e in log.read()] == [
        ({"segment": 2, "line": 0}, "r2")
    ]


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name the user"):
        pseudonyms([], [], None, [], {})
    with pytest.raises(ValueError, match="not a user pseudonym"):
        pseudonyms([], ["alice"], None, [], {})
    with pytest.raises(ValueError, match="cannot pseudonymise"):
        pseudonyms(["alice"], [], None, [], {"FLYWHEEL_PSEUDONYM_KEY": SECRET})
    assert pseudonyms(["alice"], [], None, ["app"], {"FLYWHEEL_PSEUDONYM_KEY": SECRET}) == {
        pseud("alice")
    }
    serve = tmp_path / "serve.yaml"
    serve.write_text(
        yaml.safe_dump({"applications": [{"args": {"gateway": {"api_keys": ["app:other-key-2"]}}}]})
    )
    derived = pseudonyms(["alice"], [], serve, [], {})
    assert len(derived) == 1 and derived != {pseud("alice")}  # the secret from the keys
    config = tmp_path / "loop.yaml"
    config.write_text(yaml.safe_dump(loop_settings(tmp_path)))
    result = erase(config)
    assert result.exit_code == 2 and "name the user" in result.output
    nothing = erase(config, "--user", "carol")
    assert nothing.exit_code == 0 and "nothing to erase" in nothing.output
