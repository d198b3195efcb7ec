"""The feedback consumer: reads the event log from its committed offset, joins served
outputs with feedback, keeps per-version statistics, curates corrections, measures drift.

Processing is a pure function of the event sequence: timestamps come from the events, a
duplicate event id is skipped, and the state (statistics, pending joins, candidates, the
offset) is written as one JSON document, atomically, after each batch. So a consumer that
dies mid-batch restarts from the last committed state and reprocesses the rest, and two
consumers over the same events end in the same state.

A plain class: ``ray.remote(...)`` is applied where it is started.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime
from typing import Any

from core import faults, storage
from core.events import EventLog, Offset
from core.loop.curation import Candidate, Example, Quarantined, curate
from core.loop.drift import WordProfile, drift_score, profile
from core.storage import Location
from schemas.events import Feedback, ServedOutput
from schemas.loop import LoopConfig

STATE_VERSION = 1


def _seconds(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def empty_state() -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "offset": Offset().to_json(),
        "events": 0,
        "last_event_at": None,
        "seen": {},  # event id -> event time, kept for the join window
        "pending_served": {},  # response id -> served summary, awaiting feedback
        "pending_feedback": {},  # response id -> feedback summaries, awaiting served
        "stats": {},  # version -> counters
        "recent": {},  # version -> last N accepted flags (0/1)
        "candidates": [],  # corrections joined with their served output
        "published": 0,  # candidates already taken into feedback snapshots
        "profiles": {},  # version -> live word profile of served prompts
    }


class FeedbackConsumer:
    """Consumes the event log into durable statistics and curation candidates."""

    def __init__(self, cfg: dict[str, Any], autostart: bool = False) -> None:
        self.cfg = LoopConfig.model_validate(cfg)
        self.log = EventLog(self.cfg.event_log_uri, self.cfg.storage)
        self.root = storage.resolve(self.cfg.loop_uri, self.cfg.storage).join("consumer")
        self.state = self._load()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if autostart:  # a restarted actor picks its loop up again by itself
            self.start(self.cfg.tick_interval_s / 2)

    # -- consuming -----------------------------------------------------------------------------

    def step(self, max_events: int = 500) -> int:
        """Process up to ``max_events`` from the committed offset, then commit."""
        with self._lock:
            offset = Offset(**self.state["offset"])
            n = 0
            for after, event in self.log.read(offset, limit=max_events):
                self._apply(event)
                self.state["offset"] = after.to_json()
                n += 1
                faults.maybe_fail("consumer.mid_batch")
            if n:
                self._expire()
                self._commit()
            return n

    def _apply(self, event: ServedOutput | Feedback) -> None:
        s = self.state
        if event.event_id in s["seen"]:
            return  # a duplicate (the writer may replay after a crash)
        at = _seconds(event.created_at)
        s["seen"][event.event_id] = at
        s["events"] += 1
        s["last_event_at"] = max(at, s["last_event_at"] or at)
        if isinstance(event, ServedOutput):
            self._served(event, at)
        else:
            self._feedback(event, at)

    def _served(self, e: ServedOutput, at: float) -> None:
        summary = {
            "event_id": e.event_id,
            "version": e.model_version,
            "prompt": e.prompt,
            "user": e.user,
            "at": at,
        }
        self._stats(e.model_version)["requests"] += 1
        self.state["profiles"].setdefault(e.model_version, WordProfile().to_json())
        live = WordProfile.from_json(self.state["profiles"][e.model_version])
        live.add(e.prompt)
        self.state["profiles"][e.model_version] = live.top(2000).to_json()
        for fb in self.state["pending_feedback"].pop(e.response_id, []):
            self._join(summary, fb)
        self.state["pending_served"][e.response_id] = summary

    def _feedback(self, e: Feedback, at: float) -> None:
        fb = {
            "event_id": e.event_id,
            "rating": e.rating,
            "correction": e.correction,
            "user": e.user,
            "at": at,
        }
        served = self.state["pending_served"].get(e.response_id)
        if served is None:
            self.state["pending_feedback"].setdefault(e.response_id, []).append(fb)
        else:
            self._join(served, fb)

    def _join(self, served: dict[str, Any], fb: dict[str, Any]) -> None:
        version = served["version"]
        stats = self._stats(version)
        accepted = fb["rating"] >= 4
        stats["rated"] += 1
        stats["rating_sum"] += fb["rating"]
        stats["accepted"] += int(accepted)
        recent = deque(
            self.state["recent"].get(version, []), maxlen=self.cfg.policy.acceptance_window
        )
        recent.append(int(accepted))
        self.state["recent"][version] = list(recent)
        if fb["correction"]:
            stats["corrections"] += 1
            self.state["candidates"].append(
                {
                    "prompt": served["prompt"],
                    "answer": fb["correction"],
                    "user": fb["user"] or served["user"],
                    "event_ids": [served["event_id"], fb["event_id"]],
                    "model_version": version,
                }
            )

    def _stats(self, version: str) -> dict[str, int]:
        return self.state["stats"].setdefault(
            version, {"requests": 0, "rated": 0, "rating_sum": 0, "accepted": 0, "corrections": 0}
        )

    def _expire(self) -> None:
        """Forget joins and seen ids older than the join window (event time)."""
        horizon = (self.state["last_event_at"] or 0) - self.cfg.join_window_s
        s = self.state
        s["seen"] = {k: t for k, t in s["seen"].items() if t >= horizon}
        s["pending_served"] = {k: v for k, v in s["pending_served"].items() if v["at"] >= horizon}
        s["pending_feedback"] = {
            k: kept
            for k, v in s["pending_feedback"].items()
            if (kept := [f for f in v if f["at"] >= horizon])
        }

    def _commit(self) -> None:
        storage.write_json(self.root.join("state.json"), self.state)

    def _load(self) -> dict[str, Any]:
        loc = self.root.join("state.json")
        return storage.read_json(loc) if storage.exists(loc) else empty_state()

    # -- what the controller and operators read -----------------------------------------------

    def version_stats(self, version: str) -> dict[str, Any]:
        with self._lock:
            stats = dict(self.state["stats"].get(version, {}))
            recent = self.state["recent"].get(version, [])
        stats["window_rated"] = len(recent)
        stats["window_acceptance"] = sum(recent) / len(recent) if recent else None
        stats["mean_rating"] = stats["rating_sum"] / stats["rated"] if stats.get("rated") else None
        return stats

    def pending_examples(self) -> dict[str, Any]:
        """Curated examples and quarantined items among candidates not yet published."""
        with self._lock:
            upto = len(self.state["candidates"])
            fresh = self.state["candidates"][self.state["published"] : upto]
        examples, quarantined = curate(Candidate(**c) for c in fresh)
        return {
            "upto": upto,
            "examples": [_example(e) for e in examples],
            "quarantined": [_quarantined(q) for q in quarantined],
        }

    def mark_published(self, upto: int) -> None:
        with self._lock:
            self.state["published"] = max(self.state["published"], upto)
            self._commit()

    def drift(self, version: str, reference: WordProfile) -> dict[str, float] | None:
        with self._lock:
            live = self.state["profiles"].get(version)
        return drift_score(reference, WordProfile.from_json(live)) if live else None

    def status(self) -> dict[str, Any]:
        with self._lock:
            s = self.state
            return {
                "offset": s["offset"],
                "events": s["events"],
                "pending_joins": len(s["pending_served"]) + len(s["pending_feedback"]),
                "candidates": len(s["candidates"]),
                "published": s["published"],
                "versions": sorted(s["stats"]),
            }

    def snapshot_state(self) -> dict[str, Any]:
        with self._lock:
            return {k: v for k, v in self.state.items() if k not in ("seen", "profiles")}

    # -- running in the background -------------------------------------------------------------

    def start(self, interval_s: float = 1.0) -> bool:
        if self._thread and self._thread.is_alive():
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()

    def _run(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                while self.step():
                    pass
            except faults.InjectedFault:
                raise
            except Exception as e:  # a storage hiccup: the offset did not move; retry later
                print(f"[feedback] step failed, will retry: {e}", flush=True)
            self._stop.wait(interval_s)


def _example(e: Example) -> dict[str, Any]:
    return {
        "prompt": e.prompt,
        "answer": e.answer,
        "event_ids": e.event_ids,
        "users": e.users,
        "key": e.key,
    }


def _quarantined(q: Quarantined) -> dict[str, Any]:
    return {
        "reason": q.reason,
        "prompt": q.prompt,
        "answer": q.answer,
        "user": q.user,
        "event_ids": q.event_ids,
    }


def reference_profile(
    snapshot_uri: str, cache: Location, settings: Any = None, max_docs: int = 2000
) -> WordProfile:
    """Word profile of a training snapshot's documents (decoded), cached next to the loop."""
    from core.data.snapshots import iter_documents, resolve_snapshot, snapshot_tokenizer

    snap, manifest = resolve_snapshot(snapshot_uri, settings)
    loc = cache.join(f"reference-{manifest.snapshot_id}.json")
    if storage.exists(loc):
        return WordProfile.from_json(storage.read_json(loc))
    tokenizer = snapshot_tokenizer(snap, manifest).tokenizer
    texts = []
    for ids in iter_documents(snap, manifest):
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
        if len(texts) >= max_docs:
            break
    result = profile(texts).top(5000)
    storage.write_json(loc, result.to_json())
    return result
