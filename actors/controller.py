"""The loop controller: decides when to learn, runs fine-tune and evaluation as Ray jobs,
gates, canaries, and promotes or rolls back, on its own.

A persisted state machine (``<loop_uri>/controller/state.json``), advanced by :meth:`tick`:

    idle -> publishing -> training -> evaluating -> canary -> idle

Every phase is idempotent, so a controller that dies anywhere resumes where it stopped: the
feedback snapshot id is a content hash, and Ray jobs get submission ids derived from the
snapshot and config, so a retry finds the job it already submitted instead of starting a
twin. Every decision and its reason go to the registry's audit log and to the candidate's
evaluation reports.

A plain class: ``ray.remote(...)`` is applied where it is started.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from core import faults, storage
from core.config import config_hash, load_config
from core.loop.policy import CanaryConfig, PolicyConfig, PolicyInput, RetrainPolicy, judge_canary
from core.registry import AliasConflict, ModelRegistry
from schemas.loop import LoopConfig
from schemas.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent


def _empty() -> dict[str, Any]:
    return {
        "phase": "idle",
        "cycle": 0,
        "paused": False,
        "force": False,
        "last_trigger_at": None,
        "current": {},
        "history": [],
    }


class LoopController:
    """Drives one model's loop; ``consumer`` is the feedback consumer (actor or object)."""

    def __init__(self, cfg: dict[str, Any], consumer: Any, autostart: bool = False) -> None:
        self.cfg = LoopConfig.model_validate(cfg)
        self.consumer = consumer
        self.registry = ModelRegistry(self.cfg.registry_uri, self.cfg.storage, actor="loop")
        self.root = storage.resolve(self.cfg.loop_uri, self.cfg.storage)
        loc = self.root.join("controller", "state.json")
        self.state = storage.read_json(loc) if storage.exists(loc) else _empty()
        p = self.cfg.policy
        self.policy = RetrainPolicy(
            PolicyConfig(
                p.min_new_examples, p.min_acceptance, p.acceptance_window, p.max_drift, p.cooldown_s
            )
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._jobs: Any = None
        if autostart:  # a restarted actor picks its loop up again by itself
            self.start()

    # -- the state machine ---------------------------------------------------------------------

    def tick(self) -> dict[str, Any]:
        """Advance by at most one phase; returns the state."""
        with self._lock:
            phase = self.state["phase"]
            step = getattr(self, f"_{phase}")
            step()
            return dict(self.state)

    def _idle(self) -> None:
        pending = _call(self.consumer.pending_examples)
        production = self._production()
        stats = _call(self.consumer.version_stats, production) if production else {}
        decision = self.policy.decide(
            PolicyInput(
                new_examples=len(pending["examples"]),
                acceptance=stats.get("window_acceptance"),
                rated=stats.get("window_rated", 0),
                drift=self._drift(production),
                now=time.time(),
                last_trigger=self.state["last_trigger_at"],
                in_flight=False,
                paused=self.state["paused"],
                forced=self.state["force"],
            )
        )
        self.state["last_decision"] = decision.reason
        if not decision.trigger:
            self._save()
            return
        self.state.update(phase="publishing", force=False, last_trigger_at=time.time())
        self.state["cycle"] += 1
        self.state["current"] = {
            "reason": decision.reason,
            "production": production,
            "upto": pending["upto"],
            "triggered_at": time.time(),
        }
        self._audit(
            "loop.trigger", {"reason": decision.reason, "examples": len(pending["examples"])}
        )
        self._save()

    def _publishing(self) -> None:
        from jobs.feedback_snapshot import publish_feedback_snapshot

        cur = self.state["current"]
        pending = _call(self.consumer.pending_examples)
        snap = publish_feedback_snapshot(self.cfg, pending, self._production_snapshot())
        cur.update(
            snapshot_id=snap["snapshot_id"],
            snapshot_uri=snap["uri"],
            eval_snapshot_id=snap["eval_snapshot_id"],
            eval_snapshot_uri=snap["eval_uri"],
            examples=snap["examples"],
            quarantined=snap["quarantined"],
            upto=pending["upto"],
            published_at=time.time(),
        )
        _call(self.consumer.mark_published, pending["upto"])
        self.state["phase"] = "training"
        self._audit(
            "loop.snapshot",
            {
                "snapshot_id": snap["snapshot_id"],
                "examples": snap["examples"],
                "quarantined": snap["quarantined"],
            },
        )
        self._save()

    def _training(self) -> None:
        cur = self.state["current"]
        if "train_job" not in cur:
            config_uri, job_id = self._write_train_config(cur)
            cur.update(
                train_job=job_id,
                train_config=config_uri,
                train_result=self._job_file(job_id, "result.json"),
            )
            self._save()
        entry = (
            f"{self.cfg.jobs.python} -m jobs.train --config {cur['train_config']} "
            f"--result {cur['train_result']}"
        )
        status = self._run_job(cur["train_job"], entry)
        faults.maybe_fail("controller.training")
        if status == "SUCCEEDED":
            result = storage.read_json(storage.resolve(cur["train_result"], self.cfg.storage))
            cur.update(candidate=result["registered"], trained_at=time.time())
            self.state["phase"] = "evaluating"
        elif status in ("FAILED", "STOPPED"):
            self._finish("failed", f"fine-tune job {cur['train_job']} {status.lower()}")
        self._save()

    def _evaluating(self) -> None:
        cur = self.state["current"]
        if "eval_job" not in cur:
            config_uri, job_id = self._write_eval_config(cur)
            cur.update(
                eval_job=job_id,
                eval_config=config_uri,
                eval_result=self._job_file(job_id, "report.json"),
            )
            self._save()
        entry = (
            f"{self.cfg.jobs.python} -m jobs.evaluate --config {cur['eval_config']} "
            f"--result {cur['eval_result']}"
        )
        status = self._run_job(cur["eval_job"], entry)
        if status in ("FAILED", "STOPPED"):
            self._finish("failed", f"evaluation job {cur['eval_job']} {status.lower()}")
        elif status == "SUCCEEDED":
            report = storage.read_json(storage.resolve(cur["eval_result"], self.cfg.storage))
            cur.update(
                evaluated_at=time.time(),
                gate=report["gate"],
                scores={
                    r: {k: v for k, v in report[r].items() if k != "qa"}
                    | ({"qa_accuracy": report[r]["qa"]["accuracy"]} if "qa" in report[r] else {})
                    for r in ("candidate", "production")
                },
            )
            if report["gate"]["passed"]:
                self._start_canary(cur)
            else:
                self._report(cur, "rejected", report["gate"]["reason"])
                self._finish("rejected", report["gate"]["reason"])
        self._save()

    def _start_canary(self, cur: dict[str, Any]) -> None:
        name, version = cur["candidate"].split(":")
        self.registry.set_alias(
            name, "canary", int(version), reason=f"passed the gate: {cur['gate']['reason']}"
        )
        weight = self.cfg.canary.weight
        self.registry.set_routing(
            name,
            {"production": 100 - weight, "canary": weight},
            reason=f"canary {cur['candidate']} at {weight}%",
        )
        baseline = _call(self.consumer.version_stats, cur["candidate"])
        cur.update(canary_started_at=time.time(), canary_baseline=baseline)
        self.state["phase"] = "canary"
        self._audit("loop.canary", {"candidate": cur["candidate"], "weight": weight})

    def _canary(self) -> None:
        cur = self.state["current"]
        canary = _since(
            _call(self.consumer.version_stats, cur["candidate"]), cur["canary_baseline"]
        )
        production = _call(self.consumer.version_stats, cur["production"])
        c = self.cfg.canary
        verdict = judge_canary(canary, production, CanaryConfig(c.min_rated, c.max_acceptance_drop))
        cur["canary_stats"] = canary
        if verdict is None:
            if time.time() - cur["canary_started_at"] > c.max_wait_s:
                self._rollback(cur, "canary saw too few rated requests in time")
            self._save()
            return
        if verdict.trigger:
            self._promote(cur, verdict.reason)
        else:
            self._rollback(cur, verdict.reason)
        self._save()

    def _promote(self, cur: dict[str, Any], reason: str) -> None:
        name, version = cur["candidate"].split(":")
        expected = int(cur["production"].split(":")[1]) if cur["production"] else None
        try:
            self.registry.set_alias(
                name, "production", int(version), expected=expected, reason=f"promoted: {reason}"
            )
        except AliasConflict:
            # Someone else moved production during the cycle: the candidate was judged against
            # a version that no longer serves. Retrying could never succeed; end the cycle.
            now = self._production()
            self._rollback(cur, f"production moved from {cur['production']} to {now}: not promoted")
            return
        self._clear_canary(name)
        self._report(cur, "promoted", reason)
        self._finish("promoted", reason)

    def _rollback(self, cur: dict[str, Any], reason: str) -> None:
        self._clear_canary(cur["candidate"].split(":")[0])
        self._report(cur, "rolled_back", reason)
        self._finish("rolled_back", reason)

    def _clear_canary(self, name: str) -> None:
        self.registry.set_routing(name, {"production": 100}, reason="canary over")
        if "canary" in self.registry.aliases(name):
            self.registry.set_alias(name, "canary", None, reason="canary over")

    def _finish(self, outcome: str, reason: str) -> None:
        cur = self.state["current"]
        cur.update(outcome=outcome, outcome_reason=reason, finished_at=time.time())
        self.state["history"].append(cur)
        self.state.update(phase="idle", current={})
        self._audit(
            f"loop.{outcome}",
            {"candidate": cur.get("candidate"), "reason": reason, "cycle": self.state["cycle"]},
        )

    def _report(self, cur: dict[str, Any], decision: str, reason: str) -> None:
        self.registry.add_eval_report(
            cur["candidate"],
            {
                "kind": "loop_decision",
                "decision": decision,
                "reason": reason,
                "cycle": self.state["cycle"],
                "trigger": cur.get("reason"),
                "feedback_snapshot": cur.get("snapshot_id"),
                "scores": cur.get("scores"),
                "canary_stats": cur.get("canary_stats"),
            },
        )

    # -- operator controls ---------------------------------------------------------------------

    def pause(self, paused: bool = True) -> dict[str, Any]:
        with self._lock:
            self.state["paused"] = paused
            self._audit("loop.pause" if paused else "loop.resume", {})
            self._save()
            return dict(self.state)

    def force_trigger(self) -> dict[str, Any]:
        with self._lock:
            self.state["force"] = True
            self._audit("loop.force", {})
            self._save()
            return dict(self.state)

    def rollback(self, reason: str = "operator rollback") -> dict[str, Any]:
        """Roll back production to its previous version (and end any canary)."""
        with self._lock:
            name = self.cfg.model_name
            if self.state["phase"] == "canary":
                self._rollback(self.state["current"], reason)
            else:
                self._clear_canary(name)
                self.registry.rollback(name, "production", reason=reason)
            self._save()
            return dict(self.state)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self.state))

    # -- running in the background -------------------------------------------------------------

    def start(self) -> bool:
        if self._thread and self._thread.is_alive():
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from actors.loop_metrics import loop_metrics

        metrics = loop_metrics()
        while not self._stop.is_set():
            try:
                self.tick()
                self._export(metrics)
            except faults.InjectedFault:
                raise
            except Exception as e:  # keep the loop alive; the phase is retried next tick
                print(f"[controller] tick failed in {self.state['phase']}: {e!r}", flush=True)
            self._stop.wait(self.cfg.tick_interval_s)

    def _export(self, metrics: dict[str, Any]) -> None:
        """Loop state as Prometheus gauges (see actors/loop_metrics.py)."""
        model = {"model": self.cfg.model_name}
        for phase in ("idle", "publishing", "training", "evaluating", "canary"):
            metrics["phase"].set(
                float(self.state["phase"] == phase), tags={**model, "phase": phase}
            )
        metrics["cycle"].set(self.state["cycle"], tags=model)
        status = _call(self.consumer.status)
        metrics["consumer_offset"].set(status["events"], tags=model)
        metrics["pending_examples"].set(status["candidates"] - status["published"], tags=model)
        for version in status["versions"]:
            stats = _call(self.consumer.version_stats, version)
            if stats.get("rated"):
                metrics["acceptance"].set(
                    stats["accepted"] / stats["rated"], tags={"model_version": version}
                )

    # -- helpers -------------------------------------------------------------------------------

    def _production(self) -> str | None:
        version = self.registry.aliases(self.cfg.model_name).get("production")
        return f"{self.cfg.model_name}:{version}" if version else None

    def _production_snapshot(self) -> str | None:
        """The corpus production learned from: the first dataset snapshot on its lineage
        chain that is not one of this loop's feedback snapshots. Drift is measured against
        it, evaluation holds out its first blocks and fine-tunes rehearse its last ones."""
        return corpus_snapshot(self.registry, self._production(), self.root.join("feedback").uri)

    def _drift(self, production: str | None) -> float | None:
        from actors.feedback import reference_profile

        snapshot = self._production_snapshot()
        if not production or not snapshot:
            return None
        try:
            reference = reference_profile(snapshot, self.root.join("consumer"), self.cfg.storage)
        except Exception:  # drift is advisory: an unreadable snapshot must not stop the loop
            return None
        result = _call(self.consumer.drift, production, reference)
        self.state["drift"] = result
        return result["score"] if result else None

    def _write_train_config(self, cur: dict[str, Any]) -> tuple[str, str]:
        f = self.cfg.finetune
        base = load_config(TrainConfig, _recipe(f.recipe), f.overrides)
        train = base.model_copy(
            update={
                "mode": "lora",
                "model": base.model.model_copy(
                    update={"registry_ref": cur["production"], "uri": None, "architecture": None}
                ),
                "data": self._finetune_data(base.data, cur["snapshot_uri"]),
                "registry": base.registry.model_copy(
                    update={
                        "uri": self.cfg.registry_uri,
                        "model_name": self.cfg.model_name,
                        "alias": None,
                    }
                ),
                "storage": self.cfg.storage,
            }
        )
        job_id = _job_id("finetune", cur["snapshot_id"], config_hash(train, exclude={"run_name"}))
        train = train.model_copy(update={"run_name": job_id})
        loc = self.root.join("jobs", job_id, "train.json")
        storage.write_json(
            loc, TrainConfig.model_validate(train.model_dump()).model_dump(mode="json")
        )
        return loc.uri, job_id

    def _finetune_data(self, data: Any, snapshot_uri: str) -> Any:
        """The feedback snapshot, with a rehearsal sample of production's corpus mixed in
        (the workers' shuffle buffer holds both, so every step sees some of each)."""
        replay = self._production_snapshot() if self.cfg.finetune.replay_blocks else None
        update: dict[str, Any] = {"snapshot_uri": snapshot_uri}
        if replay:
            update.update(
                replay_snapshot_uri=replay,
                replay_blocks=self.cfg.finetune.replay_blocks,
                shuffle_buffer_blocks=max(
                    data.shuffle_buffer_blocks, 4 * self.cfg.finetune.replay_blocks
                ),
            )
        return data.model_copy(update=update)

    def _write_eval_config(self, cur: dict[str, Any]) -> tuple[str, str]:
        e = self.cfg.evaluate
        body = {
            "registry_uri": self.cfg.registry_uri,
            "storage": self.cfg.storage.model_dump(mode="json"),
            "candidate": cur["candidate"],
            "production": cur["production"],
            "feedback_snapshot_uri": cur["eval_snapshot_uri"],
            "heldout_snapshot_uri": e.heldout_snapshot_uri or self._production_snapshot(),
            "max_heldout_blocks": e.max_heldout_blocks,
            "qa_uri": e.qa_uri,
            "max_new_tokens": e.max_new_tokens,
            "gate": self.cfg.gate.model_dump(),
        }
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        job_id = _job_id("evaluate", cur["candidate"], digest)
        loc = self.root.join("jobs", job_id, "eval.json")
        storage.write_json(loc, body)
        return loc.uri, job_id

    def _job_file(self, job_id: str, name: str) -> str:
        return self.root.join("jobs", job_id, name).uri

    def _run_job(self, job_id: str, entrypoint: str) -> str:
        """Submit once (a known submission id means it exists), then report its status."""
        from ray.job_submission import JobSubmissionClient

        if self._jobs is None:
            self._jobs = JobSubmissionClient(job_address(self.cfg.jobs.address))
        try:
            return str(self._jobs.get_job_status(job_id).value)
        except RuntimeError:
            pass  # not submitted yet
        runtime_env: dict[str, Any] = {"env_vars": dict(self.cfg.jobs.env_vars)}
        if self.cfg.jobs.working_dir:
            runtime_env["working_dir"] = self.cfg.jobs.working_dir
        try:
            self._jobs.submit_job(
                entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env
            )
        except RuntimeError as e:
            if "already exists" not in str(e):
                raise
        self._audit(
            "job.submit", {"submission_id": job_id, "entrypoint": entrypoint}, subject=job_id
        )
        return "PENDING"

    def _audit(self, action: str, details: dict[str, Any], subject: str | None = None) -> None:
        self.registry.audit.append(
            action, subject or self.cfg.model_name, {"cycle": self.state["cycle"], **details}
        )

    def _save(self) -> None:
        storage.write_json(self.root.join("controller", "state.json"), self.state)


def _recipe(path: str) -> str:
    local = Path(path)
    return str(local if local.is_absolute() or "://" in path else REPO / local)


def corpus_snapshot(registry: ModelRegistry, ref: str | None, feedback_root: str) -> str | None:
    """The first dataset snapshot on ``ref``'s lineage chain (itself, its parent, ...) that
    is not a feedback snapshot under ``feedback_root``: what the model knows, as opposed to
    the corrections it was last taught."""
    while ref:
        lineage = registry.get(ref).lineage
        for snap in lineage.dataset_snapshots:
            if not snap.uri.startswith(feedback_root):
                return snap.uri
        ref = lineage.parent
    return None


def _job_id(kind: str, subject: str, config_digest: str) -> str:
    """Deterministic: the same snapshot and config always give the same submission id."""
    digest = hashlib.sha256(f"{subject}\0{config_digest}".encode()).hexdigest()[:16]
    return f"flywheel-{kind}-{digest}"


def _since(now: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    keys = ("requests", "rated", "accepted", "rating_sum", "corrections")
    return {k: now.get(k, 0) - (before or {}).get(k, 0) for k in keys}


def _call(method: Any, *args: Any) -> Any:
    """Call a consumer method whether the consumer is a Ray actor or a local object."""
    if hasattr(method, "remote"):
        import ray

        return ray.get(method.remote(*args))
    return method(*args)


def job_address(configured: str | None) -> str:
    """The job API address: configured, else RAY_ADDRESS if it is HTTP, else this Ray's
    dashboard (the local cluster)."""
    import os

    if configured:
        return configured
    env = os.environ.get("RAY_ADDRESS", "")
    if env.startswith("http"):
        return env
    import ray

    url = ray._private.worker.get_dashboard_url() if ray.is_initialized() else None
    if url:
        return url if url.startswith("http") else f"http://{url}"
    return "http://127.0.0.1:8265"


def python_executable() -> str:
    return sys.executable
