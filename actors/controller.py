"""The loop controller: decides when to learn, runs publishing, fine-tune and evaluation as
Ray jobs, gates, canaries, and promotes or rolls back, on its own.

The state machine itself is pure and typed (``core.loop.state``); this class performs its
side effects and persists each state it reaches (``<loop_uri>/controller/states/``),
advanced by :meth:`tick`:

    idle -> publishing -> training -> evaluating [-> awaiting_approval] -> canary -> idle

Under ``approval: required`` a candidate that passed the gate waits for a person's decision,
read from the registry (``core.registry.approvals``). The background loop that ticks it
and the operator's levers (pause, freeze, rollback) are in ``actors.controller_ops``.

Each state is a new version created exclusively, one above the last (``core.loop.statelog``):
a compare-and-set. A controller claims the log when it starts; an older one still running (a
zombie) finds its next version taken and is fenced, having written nothing.

Every phase is idempotent, so a controller that dies anywhere resumes where it stopped: the
three job phases share one function (:meth:`_job_phase`) and submit with ids derived from
their subject and config (``core.loop.recipes``), so a retry finds the job it already
submitted instead of starting a twin. Every decision and its reason go to the registry's
audit log and to the candidate's evaluation reports.

A plain class: ``ray.remote(...)`` is applied where it is started (``actors/loop.py``), which
also hands it the consumer (any object with the consumer's methods) and the job runner.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, NamedTuple

from actors.controller_ops import OperatorControls
from actors.job_runner import JobRunner, RayJobRunner
from core import faults, storage
from core.loop import recipes
from core.loop import state as machine
from core.loop.drift import reference_profile
from core.loop.policy import PolicyInput, RetrainPolicy, judge_canary
from core.loop.state import Cycle, JobPhase, JobRecord, LoopState, Phase
from core.loop.statelog import Fenced, StateLog
from core.registry import AliasConflict, ModelRegistry, approvals
from core.registry.approvals import ApprovalRecord
from schemas.base import StrictModel
from schemas.loop import LoopConfig

logger = logging.getLogger(__name__)


class JobKind(NamedTuple):
    """What differs between the phases that run as a Ray job."""

    label: str  # in outcome reasons: "fine-tune job ... failed"
    module: str  # python -m MODULE --config ... --result ...
    result_name: str  # the result file next to the job's config


JOBS = {
    JobPhase.publishing: JobKind("feedback snapshot", "jobs.feedback_snapshot", "snapshot.json"),
    JobPhase.training: JobKind("fine-tune", "jobs.train", "result.json"),
    JobPhase.evaluating: JobKind("evaluation", "jobs.evaluate", "report.json"),
}


class LoopController(OperatorControls):
    """Drives one model's loop.

    ``consumer`` is the feedback consumer, or any object with its methods (a proxy to its
    actor); ``jobs`` submits and watches Ray jobs (the cluster's job API if not given).
    """

    def __init__(
        self,
        cfg: dict[str, Any] | LoopConfig,
        consumer: Any,
        jobs: JobRunner | None = None,
        autostart: bool = False,
    ) -> None:
        self.cfg = LoopConfig.model_validate(cfg)
        self.consumer = consumer
        self.jobs = jobs or RayJobRunner(self.cfg.jobs)
        self.registry = ModelRegistry(self.cfg.registry_uri, self.cfg.storage, actor="loop")
        self.root = storage.resolve(self.cfg.loop_uri, self.cfg.storage)
        self.log = StateLog(self.root.join("controller", "states"))
        self.epoch, self.state = self._claim()
        self.version = self.epoch  # the version this controller last wrote
        self._written = machine.dump_state(self.state)
        self.policy = RetrainPolicy(self.cfg.policy)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if autostart:  # a restarted actor picks its loop up again by itself
            self.start()

    # -- the state machine ---------------------------------------------------------------------

    def tick(self) -> dict[str, Any]:
        """Advance by at most one phase; returns the state."""
        with self._lock:
            phase = self.state.phase
            if phase is Phase.idle:
                self._idle()
            elif phase is Phase.awaiting_approval:
                self._awaiting()
            elif phase is Phase.canary:
                self._canary()
            elif phase is Phase.evaluating and self.state.cur.gate is not None:
                self._gated()  # a freeze held the passed candidate here
            else:
                self._job_phase(JobPhase[phase.value])
            self._save()
            return machine.dump_state(self.state)

    def _idle(self) -> None:
        if self.state.frozen:
            reason = f"frozen by {self.state.frozen_by}: no new cycle"
            self.state = machine.decided(self.state, reason, self.state.drift)
            return
        pending = self.consumer.pending_examples()
        production = self._production()
        stats = self.consumer.version_stats(production) if production else {}
        drift = self._drift(production)
        decision = self.policy.decide(
            PolicyInput(
                new_examples=len(pending["examples"]) + len(pending.get("rated", [])),
                acceptance=stats.get("window_acceptance"),
                rated=stats.get("window_rated", 0),
                drift=drift["score"] if drift else None,
                now=time.time(),
                last_trigger=self.state.last_trigger_at,
                in_flight=False,
                paused=self.state.paused,
                forced=self.state.force,
            )
        )
        self.state = machine.decided(self.state, decision.reason, drift or self.state.drift)
        if decision.trigger:
            self.state = machine.triggered(
                self.state, decision.reason, production, pending["upto"], time.time()
            )
            details = {
                "reason": decision.reason,
                "examples": len(pending["examples"]),
                "rated": len(pending.get("rated", [])),
            }
            self._audit("loop.trigger", details)

    def _job_phase(self, phase: JobPhase) -> None:
        """Write the phase's job config and submit it once, then wait for its outcome."""
        kind = JOBS[phase]
        job = self.state.cur.job(phase)
        if job is None:
            job = self._prepare(phase)
            self.state = machine.job_submitted(self.state, phase, job)
            self._save()  # the submission id is durable before the job exists
        status = self._run(job, kind)
        faults.maybe_fail(f"controller.{phase.name}")
        if status in ("FAILED", "STOPPED"):
            self._finish("failed", f"{kind.label} job {job.submission_id} {status.lower()}")
        elif status == "SUCCEEDED":
            result = storage.read_json(storage.resolve(job.result, self.cfg.storage))
            if phase is JobPhase.publishing:
                self._published(result)
            elif phase is JobPhase.training:
                self.state = machine.trained(self.state, result, time.time())
            else:
                self._evaluated(result)

    def _run(self, job: JobRecord, kind: JobKind) -> str:
        status = self.jobs.status(job.submission_id)
        if status in ("PENDING", "RUNNING") and self._overdue(job):
            self.jobs.stop(job.submission_id)
            self._audit("job.timeout", {"submission_id": job.submission_id})
            return "STOPPED"
        if status is not None:
            return status
        entrypoint = (
            f"{self.cfg.jobs.python} -m {kind.module} --config {job.config} --result {job.result}"
        )
        self.jobs.submit(job.submission_id, entrypoint)
        details = {"submission_id": job.submission_id, "entrypoint": entrypoint}
        self._audit("job.submit", details, subject=job.submission_id)
        return "PENDING"

    def _overdue(self, job: JobRecord) -> bool:
        started = job.submitted_at
        return started is not None and time.time() - started > self.cfg.jobs.timeout_s

    def _prepare(self, phase: JobPhase) -> JobRecord:
        """Write the job's config under ``jobs/<submission id>/``; returns its record."""
        cur, corpus = self.state.cur, self._production_snapshot()
        body: StrictModel
        if phase is JobPhase.publishing:
            pending = self.consumer.pending_examples()
            body, submission = recipes.publish_config(self.cfg, pending, corpus)
        elif phase is JobPhase.training:
            body, submission = recipes.train_config(self.cfg, cur, corpus)
        else:
            body, submission = recipes.eval_config(self.cfg, cur, corpus)
        folder = self.root.join("jobs", submission)
        config = folder.join(f"{phase.value}.json")
        storage.write_json(config, body.model_dump(mode="json"))
        result = folder.join(JOBS[phase].result_name).uri
        return JobRecord(
            submission_id=submission, config=config.uri, result=result, submitted_at=time.time()
        )

    def _published(self, result: dict[str, Any]) -> None:
        self.state = machine.published(self.state, result, time.time())
        self.consumer.mark_published(result["upto"], result.get("ratings_upto"))
        details = {k: result[k] for k in ("snapshot_id", "examples", "quarantined")}
        self._audit("loop.snapshot", details)

    def _evaluated(self, report: dict[str, Any]) -> None:
        self.state = machine.evaluated(self.state, report, time.time())
        self._gated()

    def _gated(self) -> None:
        """The gate's outcome: rejected, held for a person, held by a freeze, or canary."""
        cur = self.state.cur
        reason = f"passed the gate: {cur.gate['reason']}"
        if not cur.gate["passed"]:
            self._report(cur, "rejected", cur.gate["reason"])
            self._finish("rejected", cur.gate["reason"])
        elif self.cfg.approval == "required":
            approvals.request(self.registry, cur.candidate, reason)
            self.state = machine.awaiting_approval(self.state, time.time())
        elif not self.state.frozen:  # frozen: starting the canary would move an alias
            self._start_canary(cur, reason)

    def _awaiting(self) -> None:
        """Act on a person's decision, read from the registry: it is made there whether or
        not this actor can be reached, and a restarted controller finds it."""
        record = approvals.decision(self.registry, self.state.cur.candidate)
        record = record or self._approval_timeout()
        if record is None:
            return
        self.state = machine.approval_decided(self.state, record.kind, record.by, record.note)
        cur = self.state.cur
        if record.kind == "rejected":
            reason = f"rejected by {record.by}: {record.note}"
            self._report(cur, "rejected", reason)
            self._finish("rejected", reason)
        elif not self.state.frozen:  # approved; a freeze holds it until unfrozen
            self._start_canary(cur, f"approved by {record.by}: {record.note}")

    def _approval_timeout(self) -> ApprovalRecord | None:
        timeout = self.cfg.approval_timeout_s
        if not machine.approval_timed_out(self.state, timeout, time.time()):
            return None
        note = f"no decision within {timeout:.0f}s"
        return approvals.reject_unless_decided(self.registry, self.state.cur.candidate, note)

    def _start_canary(self, cur: Cycle, reason: str) -> None:
        name, version = cur.candidate.split(":")
        self.registry.set_alias(name, "canary", int(version), reason=reason)
        weight = self.cfg.canary.weight
        self.registry.set_routing(
            name,
            {"production": 100 - weight, "canary": weight},
            reason=f"canary {cur.candidate} at {weight}%",
        )
        baseline = self.consumer.version_stats(cur.candidate)
        self.state = machine.canary_started(self.state, baseline, time.time())
        self._audit("loop.canary", {"candidate": cur.candidate, "weight": weight})

    def _canary(self) -> None:
        cur = self.state.cur
        if self.state.frozen:  # held: neither promoted nor rolled back until unfrozen
            return
        if self._production() == cur.candidate:
            # The promotion's alias move was made, and a crash kept the state from saying so.
            self._promoted(cur.candidate.split(":")[0], "production already serves it "
                           "(promoted before the controller restarted)")  # fmt: skip
            return
        # Both sides over the same time, and only what the split routed: a client that names
        # the canary, rates a response twice or rotates its user names cannot steer this.
        since = cur.canary_started_at or 0.0
        canary = self.consumer.canary_stats(cur.candidate, since)
        production = self.consumer.canary_stats(cur.production, since) if cur.production else {}
        verdict = judge_canary(canary, production, self.cfg.canary)
        self.state = machine.canary_watched(self.state, canary)
        if verdict is None:
            if machine.canary_timed_out(self.state, self.cfg.canary.max_wait_s, time.time()):
                self._rollback("canary saw too few rated requests in time")
        elif verdict.trigger:
            self._promote(verdict.reason)
        else:
            self._rollback(verdict.reason)

    def _promote(self, reason: str) -> None:
        cur = self.state.cur
        name, version = cur.candidate.split(":")
        expected = int(cur.production.split(":")[1]) if cur.production else None
        try:
            self.registry.set_alias(
                name, "production", int(version), expected=expected, reason=f"promoted: {reason}"
            )
        except AliasConflict:
            now = self._production()
            if now != cur.candidate:
                # Someone else moved production during the cycle: the candidate was judged
                # against a version that no longer serves. Retrying could never succeed.
                self._rollback(f"production moved from {cur.production} to {now}: not promoted")
                return
            # Our own move, made before a crash that kept the state from being saved.
        self._promoted(name, reason)

    def _promoted(self, name: str, reason: str) -> None:
        self._clear_canary(name)
        self._report(self.state.cur, "promoted", reason)
        self._finish("promoted", reason)

    def _rollback(self, reason: str) -> None:
        cur = self.state.cur
        self._clear_canary(cur.candidate.split(":")[0])
        self._report(cur, "rolled_back", reason)
        self._finish("rolled_back", reason)

    def _clear_canary(self, name: str) -> None:
        self.registry.set_routing(name, {"production": 100}, reason="canary over")
        if "canary" in self.registry.aliases(name):
            self.registry.set_alias(name, "canary", None, reason="canary over")

    def _finish(self, outcome: str, reason: str) -> None:
        self.state = machine.finished(self.state, outcome, reason, time.time())
        last = self.state.history[-1]
        details = {"candidate": last.candidate, "reason": reason, "cycle": self.state.cycle}
        self._audit(f"loop.{outcome}", details)

    def _report(self, cur: Cycle, decision: str, reason: str) -> None:
        self.registry.add_eval_report(
            cur.candidate,
            {
                "kind": "loop_decision",
                "decision": decision,
                "reason": reason,
                "cycle": self.state.cycle,
                "trigger": cur.reason,
                "feedback_snapshot": cur.snapshot_id,
                "scores": cur.scores,
                "canary_stats": cur.canary_stats,
            },
        )

    # -- helpers -------------------------------------------------------------------------------

    def _production(self) -> str | None:
        version = self.registry.aliases(self.cfg.model_name).get("production")
        return f"{self.cfg.model_name}:{version}" if version else None

    def _production_snapshot(self) -> str | None:
        """The corpus production learned from: the first dataset snapshot on its lineage
        chain that is not one of this loop's feedback snapshots. Drift is measured against
        it, evaluation holds out its first blocks and fine-tunes rehearse its last ones."""
        feedback_root = self.root.join("feedback").uri
        return recipes.corpus_snapshot(self.registry, self._production(), feedback_root)

    def _drift(self, production: str | None) -> dict[str, float] | None:
        snapshot = self._production_snapshot()
        if not production or not snapshot:
            return None
        try:
            reference = reference_profile(snapshot, self.root.join("consumer"), self.cfg.storage)
        except Exception:  # drift is advisory: an unreadable snapshot must not stop the loop
            logger.warning("no drift reference from %s", snapshot, exc_info=True)
            return None
        return self.consumer.drift(production, reference)

    def _audit(self, action: str, details: dict[str, Any], subject: str | None = None) -> None:
        self.registry.audit.append(
            action, subject or self.cfg.model_name, {"cycle": self.state.cycle, **details}
        )

    def _claim(self) -> tuple[int, LoopState]:
        legacy = self.root.join("controller", "state.json")  # before the versioned log
        default = storage.read_json_if_exists(legacy)
        epoch, raw = self.log.claim(machine.dump_state(machine.load_state(default)))
        return epoch, machine.load_state(raw)

    def _save(self) -> None:
        """Write the state as a new version, unless it has not changed since the last."""
        dumped = machine.dump_state(self.state)
        if dumped == self._written:
            return
        try:
            self.version = self.log.write(self.version, self.epoch, dumped)
        except Fenced:
            self._stop.set()
            raise
        self._written = dumped
