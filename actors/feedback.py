"""The feedback consumer: reads the event log from its committed offset, joins served
outputs with feedback, keeps per-version statistics, curates corrections, measures drift.

Each response holds at most one rating: a later feedback on it replaces the earlier in every
count and candidate (the gateway lets only the key it was served to rate it). A canary is
judged on :meth:`FeedbackConsumer.canary_stats`: only responses the traffic split routed,
one rating each, and no principal weighing more than ``canary.max_votes_per_principal``.

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
from core.erasure import ErasureLedger
from core.events import EventLog, Offset
from core.governance.hallucination import live_signal, rated_answers
from core.loop.curation import Candidate, Rating, curate, curate_ratings
from core.loop.drift import WordProfile, drift_score
from core.loop.erasure import ledger_filter, scrub_consumer_state
from core.loop.feedback_state import (
    ConsumerState,
    CorrectionCandidate,
    FeedbackSummary,
    RatingCandidate,
    RatingRecord,
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
        self.erasures, self._erasures_seen = ErasureLedger(self.log), 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if autostart:  # a restarted actor picks its loop up again by itself
            self.start(self.cfg.tick_interval_s / 2)

    # -- consuming -----------------------------------------------------------------------------

    def step(self, max_events: int = 500) -> int:
        """Process up to ``max_events`` from the committed offset, then commit."""
        with self._lock:
            self._forget_erased()
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
            user_text=e.user_text,
            principal=e.principal or e.user,
            key_id=e.key_id,
            split=e.split,
        )
        self._stats(e.model_version).requests += 1
        profiles = self.state.profiles
        live = WordProfile.from_json(profiles.get(e.model_version) or WordProfile().to_json())
        live.add(e.prompt)
        profiles[e.model_version] = live.top(2000).to_json()
        for fb in self.state.pending_feedback.pop(e.response_id, []):
            self._join(e.response_id, summary, fb)
        self.state.pending_served[e.response_id] = summary
        self._dropped("served", _keep_newest(self.state.pending_served, self.cfg.max_pending))

    def _feedback(self, e: Feedback, at: float) -> None:
        fb = FeedbackSummary(
            event_id=e.event_id,
            rating=e.rating,
            correction=e.correction,
            user=e.user,
            at=at,
            principal=e.principal or e.user,
            key_id=e.key_id,
        )
        served = self.state.pending_served.get(e.response_id)
        if served is None:
            waiting = self.state.pending_feedback.setdefault(e.response_id, [])
            waiting[:] = [fb]  # only the latest can count
            limit = self.cfg.max_pending_feedback
            self._dropped("feedback", _keep_newest(self.state.pending_feedback, limit))
        else:
            self._join(e.response_id, served, fb)

    def _join(self, response_id: str, served: ServedSummary, fb: FeedbackSummary) -> None:
        if served.key_id and fb.key_id and served.key_id != fb.key_id:
            # The gateway refuses this already; a forged event in the log must not count.
            self._dropped("feedback_from_another_key")
            return
        previous = self.state.rated.pop(response_id, None)
        if previous is not None:
            self._unrate(response_id, previous)
        version = served.version
        stats = self._stats(version)
        accepted = fb.rating >= 4
        stats.rated += 1
        stats.rating_sum += fb.rating
        stats.accepted += int(accepted)
        window = self.cfg.policy.acceptance_window
        recent = deque(self.state.recent.get(version, []), maxlen=window)
        recent.append((response_id, int(accepted)))
        self.state.recent[version] = list(recent)
        principal = fb.principal or served.principal
        record = RatingRecord(
            version=version,
            rating=fb.rating,
            principal=principal,
            split=served.split,
            at=served.at,
            rating_index=self.state.ratings_base + len(self.state.ratings),
        )
        self.state.ratings.append(
            RatingCandidate(
                prompt=served.prompt,
                completion=served.completion,
                rating=fb.rating,
                user=principal,
                event_ids=[served.event_id, fb.event_id],
                model_version=version,
                user_text=served.user_text,
            )
        )
        if fb.correction:
            stats.corrections += 1
            record.correction_index = self.state.candidates_base + len(self.state.candidates)
            self.state.candidates.append(
                CorrectionCandidate(
                    prompt=served.prompt,
                    answer=fb.correction,
                    user=principal,
                    event_ids=[served.event_id, fb.event_id],
                    model_version=version,
                    rejected=served.completion or None,
                    user_text=served.user_text,
                )
            )
        self.state.rated[response_id] = record

    def _unrate(self, response_id: str, old: RatingRecord) -> None:
        """Take a replaced rating out of every count, and its candidates out of curation."""
        s = self.state
        stats = self._stats(old.version)
        stats.rated -= 1
        stats.rating_sum -= old.rating
        stats.accepted -= int(old.rating >= 4)
        s.recent[old.version] = [r for r in s.recent.get(old.version, []) if r[0] != response_id]
        if old.rating_index >= s.ratings_base:
            s.ratings[old.rating_index - s.ratings_base].superseded = True
        if old.correction_index is not None:
            stats.corrections -= 1
            if old.correction_index >= s.candidates_base:
                s.candidates[old.correction_index - s.candidates_base].superseded = True

    def _dropped(self, why: str, n: int = 1) -> None:
        if n:
            self.state.dropped[why] = self.state.dropped.get(why, 0) + n

    def _stats(self, version: str) -> VersionCounters:
        return self.state.stats.setdefault(version, VersionCounters())

    def _expire(self) -> None:
        """Forget joins and seen ids older than the join window (event time)."""
        s = self.state
        horizon = (s.last_event_at or 0) - self.cfg.join_window_s
        s.seen = {k: t for k, t in s.seen.items() if t >= horizon}
        # Duplicates come from a writer's replay, so recent: the newest ids are enough.
        _keep_newest(s.seen, 2 * self.cfg.max_pending)
        s.pending_served = {k: v for k, v in s.pending_served.items() if v.at >= horizon}
        s.pending_feedback = {
            k: kept
            for k, v in s.pending_feedback.items()
            if (kept := [f for f in v if f.at >= horizon])
        }
        s.rated = {k: r for k, r in s.rated.items() if r.at >= horizon}

    def _forget_erased(self) -> None:
        """Forget what erasures recorded since the last poll name (``flywheel data erase``
        scrubs state.json too, but this process would write its own memory back over it)."""
        records = self.erasures.records(after=self._erasures_seen)
        if records:
            self._erasures_seen += len(records)
            if scrub_consumer_state(self.state, *ledger_filter(records)):
                self._commit()

    def _commit(self) -> None:
        storage.write_json(self.root.join("state.json"), self.state.model_dump(mode="json"))

    def _load(self) -> ConsumerState:
        loc = self.root.join("state.json")
        return load_consumer_state(storage.read_json_if_exists(loc))

    # -- what the controller and operators read -----------------------------------------------

    def version_stats(self, version: str) -> dict[str, Any]:
        with self._lock:
            counters = self.state.stats.get(version)
            stats: dict[str, Any] = counters.model_dump() if counters else {}
            recent = self.state.recent.get(version, [])
        stats["window_rated"] = len(recent)
        stats["window_acceptance"] = sum(a for _, a in recent) / len(recent) if recent else None
        stats["mean_rating"] = stats["rating_sum"] / stats["rated"] if stats.get("rated") else None
        return stats

    def hallucination_signal(self, version: str) -> dict[str, Any] | None:
        """``core.governance.hallucination.live_signal`` over the version's answers rated since
        the last feedback snapshot: the share that hedged, the confident ones users corrected.
        Only rated answers count, and users correct only what they notice."""
        with self._lock:
            return live_signal(rated_answers(self.state)).get(version)

    def pending_examples(self) -> dict[str, Any]:
        """Curated examples (corrections), rated answers and the quarantined items among
        candidates not yet published."""
        with self._lock:
            s = self.state
            upto = s.candidates_base + len(s.candidates)
            ratings_upto = s.ratings_base + len(s.ratings)
            fresh = [c for c in s.candidates[s.published - s.candidates_base :] if not c.superseded]
            fresh_ratings = s.ratings[s.ratings_published - s.ratings_base :]
            rated = [r for r in fresh_ratings if not r.superseded]
        examples, quarantined = curate(
            Candidate(**c.model_dump(exclude={"superseded"})) for c in fresh
        )
        # Feedback whose correction was quarantined is not trusted for its rating either.
        distrusted = {i for q in quarantined for i in q.event_ids[1:]}
        trusted = (r for r in rated if not distrusted & set(r.event_ids))
        answers, held = curate_ratings(
            Rating(**r.model_dump(exclude={"superseded"})) for r in trusted
        )
        return {
            "upto": upto,
            "ratings_upto": ratings_upto,
            "examples": [asdict(e) | {"key": e.key} for e in examples],
            "rated": [asdict(r) | {"key": r.key} for r in answers],
            "quarantined": [asdict(q) for q in quarantined + held],
        }

    def mark_published(self, upto: int, ratings_upto: int | None = None) -> None:
        with self._lock:
            s = self.state
            s.published = max(s.published, upto)
            if ratings_upto is not None:
                s.ratings_published = max(s.ratings_published, ratings_upto)
            # Published candidates are in a snapshot now: the state keeps only the rest.
            s.candidates = s.candidates[s.published - s.candidates_base :]
            s.ratings = s.ratings[s.ratings_published - s.ratings_base :]
            s.candidates_base, s.ratings_base = s.published, s.ratings_published
            self._commit()

    def canary_stats(self, version: str, since: float) -> dict[str, Any]:
        """What a promotion decision may count for ``version``: responses served since
        ``since`` (event time) that the traffic split routed, one rating each (the last), and
        each principal's ratings weighed down to at most ``canary.max_votes_per_principal``."""
        cap = self.cfg.canary.max_votes_per_principal
        with self._lock:
            votes = [
                r
                for r in self.state.rated.values()
                if r.version == version and r.split and r.at >= since
            ]
        return capped_tally(votes, cap)

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
                "rated_responses": len(s.rated),
                "candidates": s.candidates_base + len(s.candidates),
                "published": s.published,
                "versions": sorted(s.stats),
                "dropped": dict(s.dropped),
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


def capped_tally(votes: list[RatingRecord], cap: int) -> dict[str, Any]:
    """``rated`` and ``accepted`` with every principal's weight at most ``cap`` ratings (its
    acceptance kept); events without a principal count as one principal together."""
    by: dict[str | None, list[int]] = {}
    for v in votes:
        by.setdefault(v.principal, []).append(int(v.rating >= 4))
    rated = accepted = 0.0
    for flags in by.values():
        weight = min(1.0, cap / len(flags))
        rated += weight * len(flags)
        accepted += weight * sum(flags)
    return {"rated": rated, "accepted": accepted, "principals": len(by), "responses": len(votes)}


def _keep_newest(items: dict[str, Any], limit: int) -> int:
    """Past ``limit``, drop the oldest entries (dicts keep insertion order) and a tenth more,
    so a full dict is trimmed once in a while rather than on every event; how many went."""
    if len(items) <= limit:
        return 0
    extra = len(items) - limit + limit // 10
    for key in list(items)[:extra]:
        del items[key]
    return extra
