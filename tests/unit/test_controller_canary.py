"""The controller's canary ending, driven tick by tick without Ray or jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.controller import LoopController
from core import storage
from core.loop.statelog import StateLog
from core.registry import ModelRegistry
from tests.tinymodel import loop_settings, model_dir


class Ratings:
    """Stands in for the feedback consumer actor: only the per-version rating tallies the
    canary phase reads (the consumer itself is tested in test_feedback_consumer)."""

    def __init__(self, stats: dict[str, dict[str, int]]) -> None:
        self.stats = stats

    def version_stats(self, version: str) -> dict[str, int]:
        return self.stats.get(version, {})

    def canary_stats(self, version: str, since: float) -> dict[str, int]:
        return self.stats.get(version, {})


def canary_controller(tmp_path: Path, ratings: Ratings) -> tuple[LoopController, ModelRegistry]:
    """m:1 in production, m:2 on a 30% canary since a moment ago (state as the controller
    persists it), m:3 registered beside them."""
    registry = ModelRegistry(str(tmp_path / "registry"), actor="test")
    for tag in ("a", "b", "c"):
        registry.register("m", model_dir(tmp_path, tag))
    registry.set_alias("m", "production", 1)
    registry.set_alias("m", "canary", 2)
    registry.set_routing("m", {"production": 70, "canary": 30})
    cfg = loop_settings(tmp_path, canary={"min_rated": 4})
    current = {"production": "m:1", "candidate": "m:2", "canary_baseline": {}}
    current["canary_started_at"] = 1e12  # far from its deadline
    state = {"phase": "canary", "cycle": 1, "paused": False, "force": False}
    state |= {"last_trigger_at": None, "current": current, "history": []}
    StateLog(storage.resolve(str(tmp_path / "loop/controller/states"))).claim(state)
    return LoopController(cfg, ratings), registry


def liked(version: str) -> dict[str, Any]:
    return {version: {"rated": 5, "accepted": 5}}


def test_a_canary_users_like_is_promoted(tmp_path: Path) -> None:
    controller, registry = canary_controller(tmp_path, Ratings(liked("m:2")))
    state = controller.tick()
    assert state["phase"] == "idle"
    assert state["history"][-1]["outcome"] == "promoted"
    assert registry.aliases("m") == {"production": 2}
    assert registry.routing("m")["weights"] == {"production": 100}


def test_production_moved_during_the_canary_ends_the_cycle_without_promoting(
    tmp_path: Path,
) -> None:
    # Someone else (an operator, another run) put m:3 in production while m:2, judged
    # against m:1, was on canary: promoting it would silently replace m:3.
    controller, registry = canary_controller(tmp_path, Ratings(liked("m:2")))
    registry.set_alias("m", "production", 3, reason="operator")
    state = controller.tick()
    assert state["phase"] == "idle"
    last = state["history"][-1]
    assert last["outcome"] == "rolled_back"
    assert "production moved from m:1 to m:3" in last["outcome_reason"]
    assert registry.aliases("m") == {"production": 3}
    assert registry.routing("m")["weights"] == {"production": 100}


def test_a_crash_right_after_the_promotion_s_alias_move_still_ends_promoted(
    tmp_path: Path,
) -> None:
    # The move to m:2 was made, the state saying so was not: the restart must not record a
    # rollback while m:2 serves as production.
    controller, registry = canary_controller(tmp_path, Ratings(liked("m:2")))
    registry.set_alias("m", "production", 2, expected=1, reason="promoted: before the crash")
    state = controller.tick()
    assert state["history"][-1]["outcome"] == "promoted", state["history"][-1]
    assert registry.aliases("m") == {"production": 2}
    assert registry.routing("m")["weights"] == {"production": 100}
