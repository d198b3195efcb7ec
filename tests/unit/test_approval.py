"""A person in the loop: approval of a candidate that passed the gate, and the freeze that
pins production; driven tick by tick without Ray (fake jobs and consumer)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import actors.controller as controller_module
from actors.controller import LoopController
from cli.loop import controller_view
from cli.main import app
from core import storage
from core.loop import state as machine
from core.loop.statelog import StateLog
from core.registry import ModelRegistry, RegistryError, approvals, default_actor
from core.registry.approvals import ApprovalError
from tests.tinymodel import loop_settings, model_dir

runner = CliRunner()
PASSED = {"passed": True, "reason": "better"}
SCORES = {"feedback_loss": 1.0, "heldout_loss": 2.0}


class Jobs:
    """The job API: every job it is asked about has succeeded (its result is on disk)."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def status(self, submission_id: str) -> str:
        return "SUCCEEDED"

    def submit(self, submission_id: str, entrypoint: str) -> None:
        self.submitted.append(submission_id)

    def stop(self, submission_id: str) -> None:
        raise AssertionError("no job should be stopped")


class Consumer:
    """The consumer actor as the controller sees it: pending examples, a liked candidate."""

    def pending_examples(self) -> dict[str, Any]:
        example = {"prompt": "Q?", "answer": "A.", "event_ids": ["e"], "users": [], "key": "k"}
        return {"upto": 1, "examples": [example], "quarantined": []}

    def version_stats(self, version: str) -> dict[str, Any]:
        return {}

    def canary_stats(self, version: str, since: float) -> dict[str, Any]:
        return {"rated": 10, "accepted": 10}

    def drift(self, version: str, reference: Any) -> None:
        return None


def evaluated_world(tmp_path: Path, **cfg: Any) -> tuple[LoopController, ModelRegistry]:
    """m:1 in production, m:2 fine-tuned and its evaluation (passed) just finished."""
    registry = ModelRegistry(str(tmp_path / "registry"), actor="test")
    for tag in ("a", "b"):
        registry.register("m", model_dir(tmp_path, tag))
    registry.set_alias("m", "production", 1)
    report = tmp_path / "eval-report.json"
    storage.write_json(storage.resolve(str(report)), {"gate": PASSED, "candidate": SCORES,
                                                      "production": SCORES})  # fmt: skip
    current = {"production": "m:1", "candidate": "m:2", "eval_job": "ev",
               "eval_config": str(tmp_path / "ev.json"), "eval_result": str(report),
               "eval_submitted_at": 1e12}  # fmt: skip
    state = {"phase": "evaluating", "cycle": 1, "current": current, "history": []}
    StateLog(storage.resolve(str(tmp_path / "loop/controller/states"))).claim(state)
    return restarted(tmp_path, **cfg), registry


def restarted(tmp_path: Path, **cfg: Any) -> LoopController:
    settings = loop_settings(tmp_path, canary={"min_rated": 4, "weight": 20}, **cfg)
    return LoopController(settings, Consumer(), jobs=Jobs())


def awaiting(tmp_path: Path, **cfg: Any) -> tuple[LoopController, ModelRegistry]:
    controller, registry = evaluated_world(tmp_path, approval="required", **cfg)
    assert controller.tick()["phase"] == "awaiting_approval"
    return controller, registry


def audited(registry: ModelRegistry, action: str) -> list[Any]:
    return [e for e in registry.audit.entries() if e.action == action]


def cli(*args: str, registry: ModelRegistry) -> Any:
    return runner.invoke(app, ["models", *args, "--registry", registry.root.uri])


# -- approval ----------------------------------------------------------------------------------


def test_a_passing_candidate_waits_for_a_person_over_many_ticks(tmp_path: Path) -> None:
    controller, registry = awaiting(tmp_path)
    for _ in range(3):
        state = controller.tick()
    assert state["phase"] == "awaiting_approval"
    assert state["current"]["candidate"] == "m:2"
    assert registry.aliases("m") == {"production": 1}  # no canary alias
    assert registry.routing("m")["weights"] == {"production": 100}
    [request] = audited(registry, "approval.request")
    assert request.subject == "m:2"
    view = controller_view(state)
    assert view["awaiting_approval"]["candidate"] == "m:2"
    assert "flywheel models approve|reject m:2" in view["awaiting_approval"]["decide"]


def test_auto_approval_goes_straight_to_the_canary(tmp_path: Path) -> None:
    controller, registry = evaluated_world(tmp_path)
    assert controller.tick()["phase"] == "canary"
    assert registry.aliases("m") == {"production": 1, "canary": 2}


def test_approval_through_the_registry_starts_the_canary(tmp_path: Path) -> None:
    controller, registry = awaiting(tmp_path)
    approvals.decide(registry, "m:2", True, "answers look right", by="alice@desk")
    state = controller.tick()
    assert state["phase"] == "canary"
    assert registry.aliases("m") == {"production": 1, "canary": 2}
    assert registry.routing("m")["weights"] == {"production": 80, "canary": 20}
    assert state["current"]["approval_by"] == "alice@desk"
    [entry] = audited(registry, "approval.approve")
    assert entry.subject == "m:2"
    assert entry.details == {"note": "answers look right", "by": "alice@desk"}
    assert "approved by alice@desk" in registry.alias_history("m", "canary")[-1].reason
    assert controller.tick()["history"][-1]["outcome"] == "promoted"


def test_approval_through_the_cli_is_audited_with_the_caller_s_identity(tmp_path: Path) -> None:
    controller, registry = awaiting(tmp_path)
    result = cli("approve", "m:2", "--note", "ship it", registry=registry)
    assert result.exit_code == 0, result.output
    assert "m:2 approved by" in result.output
    assert controller.tick()["phase"] == "canary"
    [entry] = audited(registry, "approval.approve")
    assert entry.details == {"note": "ship it", "by": default_actor()}
    assert entry.actor == default_actor()


def test_a_rejected_candidate_ends_the_cycle_and_is_never_served(tmp_path: Path) -> None:
    controller, registry = awaiting(tmp_path)
    result = cli("reject", "m:2", "--note", "too terse", "--by", "bob", registry=registry)
    assert result.exit_code == 0, result.output
    state = controller.tick()
    assert state["phase"] == "idle"
    last = state["history"][-1]
    assert last["outcome"] == "rejected"
    assert last["outcome_reason"] == "rejected by bob: too terse"
    assert registry.aliases("m") == {"production": 1}
    assert registry.routing("m")["weights"] == {"production": 100}
    assert audited(registry, "approval.reject")[0].details == {"note": "too terse", "by": "bob"}
    assert registry.eval_reports("m:2")[-1]["decision"] == "rejected"


def test_a_second_decision_is_refused_and_the_first_stands(tmp_path: Path) -> None:
    controller, registry = awaiting(tmp_path)
    approvals.decide(registry, "m:2", True, "ok", by="alice")
    with pytest.raises(ApprovalError, match="already approved by alice"):
        approvals.decide(registry, "m:2", False, "no", by="bob")
    result = cli("reject", "m:2", "--note", "no", registry=registry)
    assert result.exit_code == 2
    assert "already approved by alice" in result.output
    assert approvals.decision(registry, "m:2").kind == "approved"
    assert controller.tick()["phase"] == "canary"


def test_only_the_loop_s_candidate_awaiting_approval_can_be_decided(tmp_path: Path) -> None:
    _, registry = awaiting(tmp_path)
    with pytest.raises(ApprovalError, match="m:1 is not awaiting approval"):
        approvals.decide(registry, "m:1", True, "sneak it in")
    with pytest.raises(ApprovalError, match="name the version"):
        approvals.decide(registry, "m", True, "latest")
    with pytest.raises(RegistryError):
        approvals.decide(registry, "m:9", True, "no such version")
    result = cli("approve", "m:1", "--note", "x", registry=registry)
    assert result.exit_code == 2 and "not awaiting approval" in result.output
    assert not audited(registry, "approval.approve")


def test_a_restarted_controller_picks_the_decision_up(tmp_path: Path) -> None:
    _, registry = awaiting(tmp_path)  # the controller that asked is gone
    approvals.decide(registry, "m:2", True, "ok", by="alice")
    state = restarted(tmp_path, approval="required").tick()
    assert state["phase"] == "canary"
    assert registry.aliases("m") == {"production": 1, "canary": 2}
    assert len(audited(registry, "approval.request")) == 1


def test_a_candidate_left_waiting_past_the_timeout_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller, registry = awaiting(tmp_path, approval_timeout_s=60)
    assert controller.tick()["phase"] == "awaiting_approval"
    later = controller_module.time.time() + 61
    monkeypatch.setattr(controller_module, "time", types.SimpleNamespace(time=lambda: later))
    state = controller.tick()
    assert state["history"][-1]["outcome_reason"] == "rejected by loop: no decision within 60s"
    assert registry.aliases("m") == {"production": 1}
    with pytest.raises(ApprovalError, match="already rejected by loop"):
        approvals.decide(registry, "m:2", True, "too late")


# -- freeze ------------------------------------------------------------------------------------


def test_freeze_blocks_a_trigger_until_unfrozen_and_is_audited(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "registry"), actor="test")
    registry.register("m", model_dir(tmp_path, "a"))
    registry.set_alias("m", "production", 1)
    controller = restarted(tmp_path)
    controller.force_trigger()
    state = controller.freeze(True, "release week", by="carol")
    assert (state["frozen"], state["frozen_by"], state["frozen_note"]) == (
        True,
        "carol",
        "release week",
    )
    state = controller.tick()
    assert (state["phase"], state["cycle"]) == ("idle", 0)
    assert state["last_decision"] == "frozen by carol: no new cycle"
    controller.freeze(False, "release done", by="carol")
    assert controller.tick()["phase"] == "publishing"
    assert audited(registry, "loop.freeze")[0].details["note"] == "release week"
    unfreeze = audited(registry, "loop.unfreeze")[0]
    assert (unfreeze.details["by"], unfreeze.details["note"]) == ("carol", "release done")


def test_freeze_holds_a_canary_neither_promoted_nor_rolled_back(tmp_path: Path) -> None:
    controller, registry = evaluated_world(tmp_path)
    assert controller.tick()["phase"] == "canary"  # users like it: promoted when judged
    controller.freeze(True, "hold", by="carol")
    for _ in range(2):
        assert controller.tick()["phase"] == "canary"
    assert registry.aliases("m") == {"production": 1, "canary": 2}
    assert registry.routing("m")["weights"] == {"production": 80, "canary": 20}
    controller.freeze(False, "go", by="carol")
    assert controller.tick()["history"][-1]["outcome"] == "promoted"
    assert registry.aliases("m") == {"production": 2}


def test_an_operator_rollback_still_ends_a_frozen_canary(tmp_path: Path) -> None:
    controller, registry = evaluated_world(tmp_path)
    controller.tick()
    controller.freeze(True, "hold", by="carol")
    state = controller.rollback("operator rollback")
    assert state["history"][-1]["outcome"] == "rolled_back"
    assert registry.aliases("m") == {"production": 1}


def test_freeze_holds_a_passed_candidate_before_its_canary(tmp_path: Path) -> None:
    controller, registry = evaluated_world(tmp_path)
    controller.freeze(True, "hold", by="carol")
    for _ in range(2):
        assert controller.tick()["phase"] == "evaluating"
    assert registry.aliases("m") == {"production": 1}
    controller.freeze(False, "go", by="carol")
    assert controller.tick()["phase"] == "canary"


def test_freeze_holds_an_approved_candidate_until_unfrozen(tmp_path: Path) -> None:
    controller, registry = awaiting(tmp_path)
    controller.freeze(True, "hold", by="carol")
    approvals.decide(registry, "m:2", True, "ok", by="alice")
    assert controller.tick()["phase"] == "awaiting_approval"
    assert registry.aliases("m") == {"production": 1}
    controller.freeze(False, "go", by="carol")
    assert controller.tick()["phase"] == "canary"


def test_loop_freeze_cli_sends_the_caller_s_identity_and_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    controller, registry = evaluated_world(tmp_path)
    handle = types.SimpleNamespace(freeze=types.SimpleNamespace(remote=controller.freeze))
    monkeypatch.setattr("cli.loop._handles", lambda config, address: (None, None, handle))
    monkeypatch.setattr(ray, "get", lambda ref: ref)  # the "remote" call ran in process
    config = tmp_path / "loop.yaml"
    config.write_text("{}")
    result = runner.invoke(app, ["loop", "freeze", "-c", str(config), "--note", "audit"])
    assert result.exit_code == 0, result.output
    assert controller.status()["frozen"] and controller.status()["frozen_by"] == default_actor()
    result = runner.invoke(app, ["loop", "unfreeze", "-c", str(config), "--note", "ok"])
    assert result.exit_code == 0, result.output
    assert not controller_view(controller.status())["frozen"]
    assert audited(registry, "loop.freeze")[0].details == {
        "cycle": 1,
        "note": "audit",
        "by": default_actor(),
    }


# -- the pure parts ----------------------------------------------------------------------------


def test_approval_timeout_none_waits_forever() -> None:
    state = machine.LoopState(phase="awaiting_approval", current=machine.Cycle())
    state = machine.awaiting_approval(state, now=100.0)
    assert not machine.approval_timed_out(state, None, now=1e12)
    assert not machine.approval_timed_out(state, 60, now=160.0)
    assert machine.approval_timed_out(state, 60, now=161.0)
