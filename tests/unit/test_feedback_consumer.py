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


def rate(rid: str, rating: int, who: str | None = None, key: str | None = None, **kw) -> Feedback:
    return Feedback(response_id=rid, rating=rating, principal=who, key_id=key, **kw)


def consumer_over(tmp_path: Path, segments: list[list], **cfg) -> FeedbackConsumer:
    log = EventLog(str(tmp_path / "log"))
    for segment in segments:
        log.append_segment(segment)
    c = FeedbackConsumer(loop_cfg(tmp_path, tmp_path / "log") | cfg)
    while c.step():
        pass
    return c


def test_a_later_rating_of_a_response_replaces_the_earlier(tmp_path: Path) -> None:
    corrections = [
        rate("r1", 1, "u", correction=f"It lasts {h} hours.") for h in (10, 20, 30, 40, 50)
    ]
    c = consumer_over(tmp_path, [[served("r1", prompt="Battery?"), *corrections]])
    stats = c.version_stats("m:1")
    assert (stats["rated"], stats["rating_sum"], stats["corrections"]) == (1, 1, 1)
    assert stats["window_rated"] == 1
    pending = c.pending_examples()
    assert [e["answer"] for e in pending["examples"]] == ["It lasts 50 hours."]
    assert len(pending["rated"]) == 1  # the one rating, not five
    # 50 good ratings of one response: one rating, acceptance from it alone.
    c = consumer_over(tmp_path / "b", [[served("r2"), *[rate("r2", 5, "m") for _ in range(50)]]])
    assert c.version_stats("m:1")["rated"] == 1


def test_feedback_from_another_key_than_the_response_s_is_dropped(tmp_path: Path) -> None:
    s = served("r1").model_copy(update={"key_id": "alice"})
    c = consumer_over(tmp_path, [[s, rate("r1", 1, "mallory", key="mallory")]])
    assert c.version_stats("m:1")["rated"] == 0
    assert c.status()["dropped"] == {"feedback_from_another_key": 1}


def test_canary_tally_counts_split_traffic_once_and_caps_each_principal(tmp_path: Path) -> None:
    split = [served(f"s{i}", "m:2", user=f"honest-{i}") for i in range(4)]
    asked = [served("x0", "m:2", user="mallory").model_copy(update={"split": False})]
    flood = [served(f"f{i}", "m:2", user="mallory") for i in range(20)]
    events = [*split, *asked, *flood]
    events += [rate(f"s{i}", 5, f"honest-{i}") for i in range(4)]
    events += [rate("x0", 1, "mallory")]  # asked for the canary by name: not counted
    events += [rate(f"f{i}", 1, "mallory") for i in range(20)]
    events += [rate("s0", 5, "honest-0")] * 1 + [rate("s1", 4, "honest-1")]  # re-rated: once
    c = consumer_over(tmp_path, [events], canary={"max_votes_per_principal": 3})
    tally = c.canary_stats("m:2", since=0)
    assert tally["responses"] == 24 and tally["principals"] == 5
    # 4 honest votes, mallory's 20 weigh as 3: 7 rated, 4 accepted.
    assert tally["rated"] == pytest.approx(7) and tally["accepted"] == pytest.approx(4)
    assert c.canary_stats("m:2", since=4e9)["rated"] == 0  # nothing served after then


def test_state_stays_bounded_under_junk_feedback(tmp_path: Path) -> None:
    junk = [rate(f"junk-{i}", 1, "mallory", correction="x" * 200) for i in range(10_000)]
    segments = [junk[i : i + 1000] for i in range(0, 10_000, 1000)]
    c = consumer_over(tmp_path, segments, max_pending_feedback=500, max_pending=1000)
    assert c.status()["pending_joins"] <= 500
    assert c.status()["dropped"]["feedback"] >= 9_500
    state = storage.resolve(str(tmp_path / "loop" / "consumer" / "state.json"))
    # 500 waiting corrections and 2,200 seen ids at most: not 10,000 corrections' worth.
    assert len(storage.read_bytes(state)) < 500 * 400 + 2200 * 60


def test_published_candidates_leave_the_state(tmp_path: Path) -> None:
    events = [served(f"r{i}", prompt=f"Q{i}?", user=f"u{i}") for i in range(5)]
    events += [rate(f"r{i}", 1, f"u{i}", correction=f"Answer {i}.") for i in range(5)]
    c = consumer_over(tmp_path, [events])
    pending = c.pending_examples()
    assert pending["upto"] == 5 and len(pending["examples"]) == 5
    c.mark_published(pending["upto"], pending["ratings_upto"])
    assert c.snapshot_state()["candidates"] == [] and c.snapshot_state()["ratings"] == []
    log = EventLog(str(tmp_path / "log"))
    log.append_segment([served("r9", prompt="Q9?"), rate("r9", 1, "u9", correction="Nine.")])
    c.step()
    pending = c.pending_examples()
    assert pending["upto"] == 6 and [e["answer"] for e in pending["examples"]] == ["Nine."]
