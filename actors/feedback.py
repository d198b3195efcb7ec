"""The feedback consumer: reads the event log from its committed offset, joins served
outputs with feedback, keeps per-version statistics, curates corrections, measures drift.

Processing is a pure function of the event sequence: timestamps come from the events, a
duplicate event id is skipped, and the state (``core.loop.feedback_state.ConsumerState``:
statistics, pending joins, candidates, the offset) is written as one JSON document,
atomically, after each batch. So a consumer that
dies mid-batch restarts from the last committed state and reprocesses the rest, and two
consumers over the same events end in the same state.

A plain class: ``ray.remote(...)`` is applied where it is started.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import asdict
from datetime import datetime
from typing import Any

from core import faults, storage
from core.events import EventLog, Offset
from core.loop.curation import Candidate, Rating, curate, curate_ratings
from core.loop.drift import WordProfile, drift_score
from core.loop.feedback_state import (
    ConsumerState,
    CorrectionCandidate,
    FeedbackSummary,
    RatingCandidate,
    ServedSummary,
    VersionCounters,
    load_consumer_state,
)
from schemas.events import Feedback, ServedOutput
from schemas.loop import LoopConfig

logger = logging.getLogger(__name__)


def _seconds(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


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
            offset = Offset(**self.state.offset)
            n = 0
            for after, event in self.log.read(offset, limit=max_events):
                self._apply(event)
                self.state.offset = after.to_json()
                n += 1
                faults.maybe_fail("consumer.mid_batch")
            if n:
                self._expire()
                self._commit()
            return n

    def _apply(self, event: ServedOutput | Feedback) -> None:
        s = self.state
        if event.event_id in s.seen:
            return  # a duplicate (the writer may replay after a crash)
        at = _seconds(event.created_at)
        s.seen[event.event_id] = at
        s.events += 1
        s.last_event_at = max(at, s.last_event_at or at)
        if isinstance(event, ServedOutput):
            self._served(event, at)
        else:
            self._feedback(event, at)

    def _served(self, e: ServedOutput, at: float) -> None:
        summary = ServedSummary(
            event_id=e.event_id,
            version=e.model_version,
            prompt=e.prompt,
            completion=e.completion,
            user=e.user,
            at=at,
        )
        self._stats(e.model_version).requests += 1
        profiles = self.state.profiles
        live = WordProfile.from_json(profiles.get(e.model_version) or WordProfile().to_json())
        live.add(e.prompt)
        profiles[e.model_version] = live.top(2000).to_json()
        for fb in self.state.pending_feedback.pop(e.response_id, []):
            self._join(summary, fb)
        self.state.pending_served[e.response_id] = summary

    def _feedback(self, e: Feedback, at: float) -> None:
        fb = FeedbackSummary(
            event_id=e.event_id, rating=e.rating, correction=e.correction, user=e.user, at=at
        )
        served = self.state.pending_served.get(e.response_id)
        if served is None:
            self.state.pending_feedback.setdefault(e.response_id, []).append(fb)
        else:
            self._join(served, fb)

    def _join(self, served: ServedSummary, fb: FeedbackSummary) -> None:
        version = served.version
        stats = self._stats(version)
        accepted = fb.rating >= 4
        stats.rated += 1
        stats.rating_sum += fb.rating
        stats.accepted += int(accepted)
        window = self.cfg.policy.acceptance_window
        recent = deque(self.state.recent.get(version, []), maxlen=window)
        recent.append(int(accepted))
        self.state.recent[version] = list(recent)
        self.state.ratings.append(
            RatingCandidate(
                prompt=served.prompt,
                completion=served.completion,
                rating=fb.rating,
                user=fb.user or served.user,
                event_ids=[served.event_id, fb.event_id],
                model_version=version,
            )
        )
        if fb.correction:
            stats.corrections += 1
            self.state.candidates.append(
                CorrectionCandidate(
                    prompt=served.prompt,
                    answer=fb.correction,
                    user=fb.user or served.user,
                    event_ids=[served.event_id, fb.event_id],
                    model_version=version,
                    rejected=served.completion or None,
                )
            )

    def _stats(self, version: str) -> VersionCounters:
        return self.state.stats.setdefault(version, VersionCounters())

    def _expire(self) -> None:
        """Forget joins and seen ids older than the join window (event time)."""
        s = self.state
        horizon = (s.last_event_at or 0) - self.cfg.join_window_s
        s.seen = {k: t for k, t in s.seen.items() if t >= horizon}
        s.pending_served = {k: v for k, v in s.pending_served.items() if v.at >= horizon}
        s.pending_feedback = {
            k: kept
            for k, v in s.pending_feedback.items()
            if (kept := [f for f in v if f.at >= horizon])
        }

    def _commit(self) -> None:
        storage.write_json(self.root.join("state.json"), self.state.model_dump(mode="json"))

    def _load(self) -> ConsumerState:
        loc = self.root.join("state.json")
        return load_consumer_state(storage.read_json(loc) if storage.exists(loc) else None)

    # -- what the controller and operators read -----------------------------------------------

    def version_stats(self, version: str) -> dict[str, Any]:
        with self._lock:
            counters = self.state.stats.get(version)
            stats: dict[str, Any] = counters.model_dump() if counters else {}
            recent = self.state.recent.get(version, [])
        stats["window_rated"] = len(recent)
        stats["window_acceptance"] = sum(recent) / len(recent) if recent else None
        stats["mean_rating"] = stats["rating_sum"] / stats["rated"] if stats.get("rated") else None
        return stats

    def pending_examples(self) -> dict[str, Any]:
        """Curated examples (corrections), rated answers and the quarantined items among
        candidates not yet published."""
        with self._lock:
            upto, ratings_upto = len(self.state.candidates), len(self.state.ratings)
            fresh = self.state.candidates[self.state.published : upto]
            rated = self.state.ratings[self.state.ratings_published : ratings_upto]
        examples, quarantined = curate(Candidate(**c.model_dump()) for c in fresh)
        # Feedback whose correction was quarantined is not trusted for its rating either.
        distrusted = {i for q in quarantined for i in q.event_ids[1:]}
        trusted = (r for r in rated if not distrusted & set(r.event_ids))
        answers, held = curate_ratings(Rating(**r.model_dump()) for r in trusted)
        return {
            "upto": upto,
            "ratings_upto": ratings_upto,
            "examples": [asdict(e) | {"key": e.key} for e in examples],
            "rated": [asdict(r) | {"key": r.key} for r in answers],
            "quarantined": [asdict(q) for q in quarantined + held],
        }

    def mark_published(self, upto: int, ratings_upto: int | None = None) -> None:
        with self._lock:
            self.state.published = max(self.state.published, upto)
            if ratings_upto is not None:
                self.state.ratings_published = max(self.state.ratings_published, ratings_upto)
            self._commit()

    def drift(self, version: str, reference: WordProfile) -> dict[str, float] | None:
        with self._lock:
            live = self.state.profiles.get(version)
        return drift_score(reference, WordProfile.from_json(live)) if live else None

    def status(self) -> dict[str, Any]:
        with self._lock:
            s = self.state
            return {
                "offset": dict(s.offset),
                "events": s.events,
                "pending_joins": len(s.pending_served) + len(s.pending_feedback),
                "candidates": len(s.candidates),
                "published": s.published,
                "versions": sorted(s.stats),
            }

    def snapshot_state(self) -> dict[str, Any]:
        with self._lock:
            return self.state.model_dump(mode="json", exclude={"seen", "profiles"})

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
            except Exception:  # a storage hiccup: the offset did not move; retry later
                logger.warning("step failed, will retry", exc_info=True)
            self._stop.wait(interval_s)
