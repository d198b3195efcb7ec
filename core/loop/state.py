"""The loop controller's persisted state and its transitions: typed, pure, Ray-free.

    idle -> publishing -> training -> evaluating [-> awaiting_approval] -> canary -> idle

``awaiting_approval`` is reached only under ``approval: required``: a person decides
(``core.registry.approvals``). A frozen loop (``frozen``) starts no cycle and moves no alias.

:class:`LoopState` is what ``<loop_uri>/controller/state.json`` holds; every function here
takes a state and returns the next one (the clock is an argument), so the whole machine is
unit-tested without Ray, storage or a registry. ``actors/controller.py`` performs the side
effects (jobs, registry, consumer) and persists what these functions return.

A cycle's fields stay flat (``train_job``, ``eval_job``, ``outcome_reason``...), as the
untyped controller wrote them: operators, the report and the CLI read ``history`` entries by
those names. State files written before the schema was typed (no ``schema_version``) are
migrated on load by :func:`load_state`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from schemas.base import StrictModel

STATE_VERSION = 2


class Phase(StrEnum):
    idle = "idle"
    publishing = "publishing"
    training = "training"
    evaluating = "evaluating"
    awaiting_approval = "awaiting_approval"
    canary = "canary"


class JobPhase(StrEnum):
    """The phases that run as a Ray job, by the prefix of their cycle fields."""

    publishing = "publish"
    training = "train"
    evaluating = "eval"


class JobRecord(StrictModel):
    """A submitted job: its deterministic submission id, its config and its result file."""

    submission_id: str
    config: str = Field(description="URI of the job's config (its --config).")
    result: str = Field(description="URI the job writes its result to (its --result).")
    submitted_at: float | None = Field(None, description="When it was first submitted.")


class Cycle(StrictModel):
    """One learning cycle, from the trigger to its outcome (times are Unix seconds)."""

    reason: str | None = Field(None, description="Why the policy triggered.")
    production: str | None = Field(None, description="Production when triggered ('m:3').")
    upto: int | None = Field(None, description="Consumer candidates covered by this cycle.")
    triggered_at: float | None = None
    publish_job: str | None = None
    publish_config: str | None = None
    publish_result: str | None = None
    publish_submitted_at: float | None = None
    snapshot_id: str | None = Field(None, description="The feedback train snapshot.")
    snapshot_uri: str | None = None
    eval_snapshot_id: str | None = Field(None, description="The held-back feedback snapshot.")
    eval_snapshot_uri: str | None = None
    examples: int | None = Field(None, description="Curated examples published.")
    counts: dict[str, int] | None = Field(
        None, description="Rows of the train snapshot by kind (sft, preference, kto_...)."
    )
    quarantined: int | None = Field(None, description="Corrections quarantined.")
    published_at: float | None = None
    train_job: str | None = None
    train_config: str | None = None
    train_result: str | None = None
    train_submitted_at: float | None = None
    candidate: str | None = Field(None, description="The fine-tuned version ('m:4').")
    trained_at: float | None = None
    eval_job: str | None = None
    eval_config: str | None = None
    eval_result: str | None = None
    eval_submitted_at: float | None = None
    evaluated_at: float | None = None
    gate: dict[str, Any] | None = Field(None, description="{passed, reason} of the gate.")
    scores: dict[str, Any] | None = Field(None, description="Evaluation scores by role.")
    approval_requested_at: float | None = None
    approval: str | None = Field(None, description="approved or rejected, by a person.")
    approval_by: str | None = Field(None, description="Who decided (user@host, or --by).")
    approval_note: str | None = None
    canary_started_at: float | None = None
    canary_baseline: dict[str, Any] | None = Field(
        None, description="The candidate's counters when its canary began."
    )
    canary_stats: dict[str, Any] | None = Field(
        None, description="Its split-routed, capped tally since then (consumer.canary_stats)."
    )
    outcome: str | None = Field(None, description="promoted, rolled_back, rejected or failed.")
    outcome_reason: str | None = None
    finished_at: float | None = None

    def job(self, phase: JobPhase) -> JobRecord | None:
        """The job this cycle submitted for ``phase``, if any."""
        submission_id = getattr(self, f"{phase.value}_job")
        if submission_id is None:
            return None
        return JobRecord(
            submission_id=submission_id,
            config=getattr(self, f"{phase.value}_config"),
            result=getattr(self, f"{phase.value}_result"),
            submitted_at=getattr(self, f"{phase.value}_submitted_at"),
        )

    def with_job(self, phase: JobPhase, job: JobRecord) -> Cycle:
        p = phase.value
        update = {f"{p}_job": job.submission_id, f"{p}_config": job.config}
        update |= {f"{p}_result": job.result, f"{p}_submitted_at": job.submitted_at}
        return self.model_copy(update=update)


class LoopState(StrictModel):
    """Everything the controller persists."""

    schema_version: Literal[2] = STATE_VERSION
    phase: Phase = Phase.idle
    cycle: int = Field(0, ge=0, description="Cycles triggered so far.")
    paused: bool = False
    force: bool = Field(False, description="An operator asked for a cycle now.")
    frozen: bool = Field(False, description="Production pinned: no new cycle, no alias moves.")
    frozen_by: str | None = None
    frozen_at: float | None = None
    frozen_note: str | None = None
    last_trigger_at: float | None = None
    last_decision: str | None = Field(None, description="The policy's last reason.")
    drift: dict[str, float] | None = Field(None, description="Production's last drift score.")
    current: Cycle | None = Field(None, description="The cycle in flight (None when idle).")
    history: list[Cycle] = Field(default_factory=list)

    @property
    def cur(self) -> Cycle:
        """The cycle in flight; only phases past idle call this."""
        if self.current is None:
            raise RuntimeError(f"phase {self.phase} has no cycle in flight")
        return self.current


def load_state(raw: dict[str, Any] | None) -> LoopState:
    """Validate a persisted state, migrating the untyped (version 1) shape: it had no
    ``schema_version`` and kept ``current`` as ``{}`` when idle."""
    if raw is None:
        return LoopState()
    if "schema_version" not in raw:
        raw = {**raw, "schema_version": STATE_VERSION, "current": raw.get("current") or None}
    return LoopState.model_validate(raw)


def dump_state(state: LoopState) -> dict[str, Any]:
    """The JSON document persisted and returned by ``status()``, shaped as callers have
    always read it: ``current`` is ``{}`` when idle, and a cycle holds only the fields it
    has reached (``"examples" in cycle`` says it got as far as publishing)."""
    body = state.model_dump(mode="json", exclude={"current", "history"})
    body["current"] = _cycle_json(state.current) if state.current else {}
    body["history"] = [_cycle_json(c) for c in state.history]
    return body


def _cycle_json(cycle: Cycle) -> dict[str, Any]:
    return cycle.model_dump(mode="json", exclude_none=True)


# -- transitions -------------------------------------------------------------------------------


def decided(state: LoopState, reason: str, drift: dict[str, float] | None) -> LoopState:
    """The policy looked and did not trigger (or did: :func:`triggered` follows)."""
    return state.model_copy(update={"last_decision": reason, "drift": drift})


def triggered(
    state: LoopState, reason: str, production: str | None, upto: int, now: float
) -> LoopState:
    cycle = Cycle(reason=reason, production=production, upto=upto, triggered_at=now)
    return state.model_copy(
        update={
            "phase": Phase.publishing,
            "force": False,
            "last_trigger_at": now,
            "cycle": state.cycle + 1,
            "current": cycle,
        }
    )


def job_submitted(state: LoopState, phase: JobPhase, job: JobRecord) -> LoopState:
    return state.model_copy(update={"current": state.cur.with_job(phase, job)})


def published(state: LoopState, result: dict[str, Any], now: float) -> LoopState:
    """The publish job wrote its snapshots (``jobs.feedback_snapshot`` result)."""
    cycle = state.cur.model_copy(
        update={
            "snapshot_id": result["snapshot_id"],
            "snapshot_uri": result["uri"],
            "eval_snapshot_id": result["eval_snapshot_id"],
            "eval_snapshot_uri": result["eval_uri"],
            "examples": result["examples"],
            "counts": result.get("counts"),
            "quarantined": result["quarantined"],
            "upto": result["upto"],
            "published_at": now,
        }
    )
    return state.model_copy(update={"phase": Phase.training, "current": cycle})


def trained(state: LoopState, result: dict[str, Any], now: float) -> LoopState:
    """The fine-tune job registered its candidate (``jobs.train`` result)."""
    cycle = state.cur.model_copy(update={"candidate": result["registered"], "trained_at": now})
    return state.model_copy(update={"phase": Phase.evaluating, "current": cycle})


def evaluated(state: LoopState, report: dict[str, Any], now: float) -> LoopState:
    """The evaluation job's report is in; the phase stays until the gate's outcome."""
    cycle = state.cur.model_copy(
        update={"evaluated_at": now, "gate": report["gate"], "scores": scores(report)}
    )
    return state.model_copy(update={"current": cycle})


def scores(report: dict[str, Any]) -> dict[str, Any]:
    """Per role, the evaluation's numbers with QA reduced to its accuracy."""
    out = {}
    for role in ("candidate", "production"):
        numbers = {k: v for k, v in report[role].items() if k != "qa"}
        if "qa" in report[role]:
            numbers["qa_accuracy"] = report[role]["qa"]["accuracy"]
        out[role] = numbers
    return out


def awaiting_approval(state: LoopState, now: float) -> LoopState:
    """The candidate passed the gate and waits for a person's decision."""
    cycle = state.cur.model_copy(update={"approval_requested_at": now})
    return state.model_copy(update={"phase": Phase.awaiting_approval, "current": cycle})


def approval_decided(state: LoopState, decision: str, by: str, note: str) -> LoopState:
    """A person decided; :func:`canary_started` or :func:`finished` follows."""
    update = {"approval": decision, "approval_by": by, "approval_note": note}
    return state.model_copy(update={"current": state.cur.model_copy(update=update)})


def approval_timed_out(state: LoopState, timeout_s: float | None, now: float) -> bool:
    asked = state.cur.approval_requested_at
    return timeout_s is not None and asked is not None and now - asked > timeout_s


def freeze_changed(state: LoopState, frozen: bool, by: str, note: str, now: float) -> LoopState:
    """An operator pinned production (or let it go); who, when and why stay recorded."""
    update = {"frozen": frozen, "frozen_by": by, "frozen_at": now, "frozen_note": note}
    return state.model_copy(update=update)


def canary_started(state: LoopState, baseline: dict[str, Any], now: float) -> LoopState:
    cycle = state.cur.model_copy(update={"canary_started_at": now, "canary_baseline": baseline})
    return state.model_copy(update={"phase": Phase.canary, "current": cycle})


def canary_watched(state: LoopState, stats: dict[str, Any]) -> LoopState:
    cycle = state.cur.model_copy(update={"canary_stats": stats})
    return state.model_copy(update={"current": cycle})


def finished(state: LoopState, outcome: str, reason: str, now: float) -> LoopState:
    """The cycle ends (any outcome): it joins the history, the loop is idle again."""
    cycle = state.cur.model_copy(
        update={"outcome": outcome, "outcome_reason": reason, "finished_at": now}
    )
    return state.model_copy(
        update={"phase": Phase.idle, "current": None, "history": [*state.history, cycle]}
    )


def canary_timed_out(state: LoopState, max_wait_s: float, now: float) -> bool:
    started = state.cur.canary_started_at
    return started is not None and now - started > max_wait_s
