"""The loop's state machine without Ray: pure transitions, migrating the untyped state file,
and the controller's job phases driven by a fake job runner (one submission per phase, a
deterministic id, a retry after a restart finds the same job)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actors.controller import LoopController
from core import storage
from core.loop import state as machine
from core.loop.state import Cycle, JobPhase, JobRecord, LoopState, Phase
from core.loop.statelog import StateLog
from core.registry import ModelRegistry
from tests.tinymodel import loop_settings, model_dir


def test_a_cycle_goes_round_and_joins_the_history() -> None:
    s = machine.triggered(LoopState(), "20 new curated examples", "m:1", upto=20, now=10.0)
    assert (s.phase, s.cycle, s.last_trigger_at, s.current.production) == (
        Phase.publishing,
        1,
        10.0,
        "m:1",
    )
    job = JobRecord(submission_id="flywheel-publish-x", config="c.json", result="r.json")
    s = machine.job_submitted(s, JobPhase.publishing, job)
    assert s.cur.job(JobPhase.publishing) == job and s.cur.publish_job == "flywheel-publish-x"
    assert s.cur.job(JobPhase.training) is None
    snap = {"snapshot_id": "s1", "uri": "u1", "eval_snapshot_id": "e1", "eval_uri": "eu1"}
    s = machine.published(s, snap | {"examples": 20, "quarantined": 2, "upto": 22}, now=11.0)
    assert s.phase is Phase.training and s.cur.upto == 22 and s.cur.eval_snapshot_uri == "eu1"
    s = machine.trained(s, {"registered": "m:2"}, now=12.0)
    assert s.phase is Phase.evaluating and s.cur.candidate == "m:2"
    report = {
        "gate": {"passed": True, "reason": "ok"},
        "candidate": {"feedback_loss": 1.0, "qa": {"accuracy": 0.5, "n": 2}},
        "production": {"feedback_loss": 2.0},
    }
    s = machine.evaluated(s, report, now=13.0)
    assert s.cur.scores == {
        "candidate": {"feedback_loss": 1.0, "qa_accuracy": 0.5},
        "production": {"feedback_loss": 2.0},
    }
    s = machine.canary_started(s, {"rated": 3}, now=14.0)
    assert s.phase is Phase.canary
    assert machine.canary_timed_out(s, max_wait_s=5, now=20.0)
    assert not machine.canary_timed_out(s, max_wait_s=10, now=20.0)
    s = machine.finished(s, "promoted", "users liked it", now=15.0)
    assert s.phase is Phase.idle and s.current is None
    (done,) = s.history
    assert (done.outcome, done.outcome_reason, done.candidate) == (
        "promoted",
        "users liked it",
        "m:2",
    )


def test_transitions_do_not_change_the_state_they_are_given() -> None:
    before = machine.triggered(LoopState(), "forced", None, upto=2, now=1.0)
    frozen = before.model_dump()
    machine.finished(before, "failed", "boom", now=2.0)
    assert before.model_dump() == frozen


def test_an_untyped_state_file_is_migrated_on_load() -> None:
    old = {
        "phase": "evaluating",
        "cycle": 3,
        "paused": False,
        "force": False,
        "last_trigger_at": None,
        "last_decision": "waiting: 1/20 examples",
        "drift": {"score": 0.1, "words_js": 0.1, "length_shift": 0.0},
        "current": {"reason": "resumed", "production": "m:1", "candidate": "m:2"},
        "history": [{"candidate": "m:1", "outcome": "rejected", "outcome_reason": "margin"}],
    }
    s = machine.load_state(old)
    assert s.schema_version == machine.STATE_VERSION and s.phase is Phase.evaluating
    assert s.cur.candidate == "m:2" and s.history[0].outcome_reason == "margin"
    idle = machine.load_state({**old, "phase": "idle", "current": {}})
    assert idle.current is None
    assert machine.dump_state(idle)["current"] == {}  # as callers have always read it
    assert machine.dump_state(s)["current"] == old["current"]  # only the fields reached
    assert machine.load_state(machine.dump_state(s)) == s
    with pytest.raises(ValueError, match="phase"):
        machine.load_state({**old, "phase": "dreaming"})


class FakeJobs:
    """Stands in for RayJobRunner: records submissions; a test decides how each job ends."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, str]] = []
        self.statuses: dict[str, str] = {}

    def status(self, submission_id: str) -> str | None:
        return self.statuses.get(submission_id)

    def submit(self, submission_id: str, entrypoint: str) -> None:
        self.submitted.append((submission_id, entrypoint))
        self.statuses.setdefault(submission_id, "RUNNING")

    def stop(self, submission_id: str) -> None:
        self.statuses[submission_id] = "STOPPED"


class Consumer:
    """Only what the publishing phase reads of the feedback consumer."""

    def __init__(self) -> None:
        self.published: list[int] = []

    def pending_examples(self) -> dict[str, Any]:
        examples = [
            {"prompt": f"Q{i}?", "answer": "A.", "event_ids": [f"e{i}"], "users": [], "key": k}
            for i, k in enumerate(("0" * 16, "1" * 16, "2" * 16))
        ]
        return {"upto": 5, "examples": examples, "quarantined": []}

    def mark_published(self, upto: int, ratings_upto: int | None = None) -> None:
        self.published.append(upto)


def publishing_controller(tmp_path: Path, jobs: FakeJobs) -> tuple[LoopController, Consumer]:
    registry = ModelRegistry(str(tmp_path / "registry"), actor="test")
    registry.register("m", model_dir(tmp_path, "a"))
    registry.set_alias("m", "production", 1)
    cfg = loop_settings(tmp_path, jobs={"python": "python3"})
    state = machine.triggered(LoopState(), "forced", "m:1", upto=5, now=1.0)
    loc = storage.resolve(str(tmp_path / "loop/controller/states"))
    StateLog(loc).claim(machine.dump_state(state))
    consumer = Consumer()
    return LoopController(cfg, consumer, jobs), consumer


def test_publishing_runs_as_a_job_submitted_once(tmp_path: Path) -> None:
    jobs = FakeJobs()
    controller, consumer = publishing_controller(tmp_path, jobs)
    assert controller.tick()["phase"] == "publishing"
    ((job_id, entrypoint),) = jobs.submitted
    assert job_id.startswith("flywheel-publish-")
    assert entrypoint.startswith("python3 -m jobs.feedback_snapshot --config ")
    config = json.loads(Path(controller.state.cur.publish_config).read_text())
    assert config["upto"] == 5 and len(config["examples"]) == 3
    # A controller restarted mid-job finds the job it submitted instead of starting a twin.
    restarted = LoopController(controller.cfg, consumer, jobs)
    assert restarted.tick()["current"]["publish_job"] == job_id
    assert len(jobs.submitted) == 1
    result = {"snapshot_id": "s", "uri": "u", "eval_snapshot_id": "e", "eval_uri": "eu"}
    result |= {"examples": 3, "quarantined": 0, "upto": 5}
    storage.write_json(storage.resolve(restarted.state.cur.publish_result), result)
    jobs.statuses[job_id] = "SUCCEEDED"
    state = restarted.tick()
    assert state["phase"] == "training" and state["current"]["snapshot_uri"] == "u"
    assert consumer.published == [5]


def test_a_failed_job_ends_the_cycle_with_its_reason(tmp_path: Path) -> None:
    jobs = FakeJobs()
    controller, _ = publishing_controller(tmp_path, jobs)
    controller.tick()
    ((job_id, _),) = jobs.submitted
    jobs.statuses[job_id] = "FAILED"
    state = controller.tick()
    assert state["phase"] == "idle" and state["current"] == {}
    last = state["history"][-1]
    assert last["outcome"] == "failed"
    assert last["outcome_reason"] == f"feedback snapshot job {job_id} failed"


def test_a_job_past_its_timeout_is_stopped_and_ends_the_cycle(tmp_path: Path) -> None:
    jobs = FakeJobs()
    controller, _ = publishing_controller(tmp_path, jobs)
    controller.tick()
    ((job_id, _),) = jobs.submitted
    assert controller.tick()["phase"] == "publishing"  # running, within jobs.timeout_s
    job = controller.state.cur.job(JobPhase.publishing)
    late = job.model_copy(update={"submitted_at": job.submitted_at - 3601})
    controller.state = machine.job_submitted(controller.state, JobPhase.publishing, late)
    state = controller.tick()
    assert jobs.statuses[job_id] == "STOPPED"
    assert state["history"][-1]["outcome_reason"] == f"feedback snapshot job {job_id} stopped"


def test_a_cycle_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        Cycle.model_validate({"candidate": "m:2", "typo_field": 1})
