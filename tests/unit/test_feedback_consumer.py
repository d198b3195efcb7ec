"""The feedback consumer without Ray: joins in either order, idempotent replays, resuming
from the committed offset after a crash mid-batch, pending examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.feedback import FeedbackConsumer
from core import faults, storage
from core.events import EventLog
from schemas.events import Feedback, ServedOutput
from tests.tinymodel import served_output


def served(rid: str, version: str = "m:1", prompt: str = "Q?", user: str = "u") -> ServedOutput:
    return served_output(rid, version, prompt, user, completion="a")


def loop_cfg(tmp: Path, log: Path) -> dict:
    return {
        "model_name": "m",
        "registry_uri": str(tmp / "reg"),
        "event_log_uri": str(log),
        "loop_uri": str(tmp / "loop"),
        "finetune": {"recipe": "x.yaml"},
        "policy": {"acceptance_window": 3},
    }


def build_log(path: Path) -> list:
    log = EventLog(str(path))
    s1, s2, s3 = served("r1"), served("r2", prompt="Battery?"), served("r3", "m:2")
    f2 = Feedback(response_id="r2", rating=1, correction="It lasts 36 hours.", user="u2")
    events = [
        [s1, Feedback(response_id="r1", rating=5)],
        [f2, s3],  # feedback before its served output: joined when r2 arrives
        [s2, Feedback(response_id="r3", rating=4), f2],  # f2 again: a duplicate event id
    ]
    for segment in events:
        log.append_segment(segment)
    return events


def test_joins_stats_and_candidates(tmp_path: Path) -> None:
    build_log(tmp_path / "log")
    c = FeedbackConsumer(loop_cfg(tmp_path, tmp_path / "log"))
    assert c.step() == 7
    assert c.version_stats("m:1") | {} == {
        "requests": 2,
        "rated": 2,
        "rating_sum": 6,
        "accepted": 1,
        "corrections": 1,
        "window_rated": 2,
        "window_acceptance": 0.5,
        "mean_rating": 3.0,
    }
    assert c.version_stats("m:2")["accepted"] == 1
    pending = c.pending_examples()
    assert [(e["prompt"], e["answer"]) for e in pending["examples"]] == [
        ("Battery?", "It lasts 36 hours.")
    ]
    assert len(pending["examples"][0]["event_ids"]) == 2
    c.mark_published(pending["upto"])
    assert c.pending_examples()["examples"] == []
    assert c.step() == 0  # nothing new
    resumed = FeedbackConsumer(loop_cfg(tmp_path, tmp_path / "log"))
    assert resumed.snapshot_state() == c.snapshot_state()


def test_replaying_the_same_events_gives_the_same_state(tmp_path: Path) -> None:
    build_log(tmp_path / "log")
    a = FeedbackConsumer(loop_cfg(tmp_path / "a", tmp_path / "log"))
    b = FeedbackConsumer(loop_cfg(tmp_path / "b", tmp_path / "log"))
    while a.step(max_events=2):
        pass
    b.step(max_events=100)
    assert a.snapshot_state() == b.snapshot_state()


def test_crash_mid_batch_resumes_from_the_committed_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_log(tmp_path / "log")
    clean = FeedbackConsumer(loop_cfg(tmp_path / "clean", tmp_path / "log"))
    clean.step()
    cfg = loop_cfg(tmp_path / "chaos", tmp_path / "log")
    first = FeedbackConsumer(cfg)
    assert first.step(max_events=3) == 3  # committed
    committed = dict(first.state.offset)
    monkeypatch.setenv(faults.ENV, f"consumer.mid_batch=raise:{tmp_path / 'marker'}")
    with pytest.raises(faults.InjectedFault):
        first.step()  # dies after applying one event, before committing
    monkeypatch.delenv(faults.ENV)
    restarted = FeedbackConsumer(cfg)
    assert first.state.offset != committed  # it had moved on in memory
    assert restarted.status()["offset"] == committed
    assert restarted.status()["events"] == 3  # the uncommitted event is not counted
    restarted.step()
    assert restarted.snapshot_state() == clean.snapshot_state()


def test_a_state_file_from_before_the_typed_state_is_read(tmp_path: Path) -> None:
    build_log(tmp_path / "log")
    c = FeedbackConsumer(loop_cfg(tmp_path, tmp_path / "log"))
    c.step()
    loc = c.root.join("state.json")
    old = storage.read_json(loc)
    old["version"] = old.pop("schema_version")  # the untyped consumer's key
    storage.write_json(loc, old)
    resumed = FeedbackConsumer(loop_cfg(tmp_path, tmp_path / "log"))
    assert resumed.snapshot_state() == c.snapshot_state()
    assert resumed.step() == 0
