"""The event writer: buffers served-output and feedback events into log segments.

Callers (gateway replicas) send batches of events; :meth:`EventWriter.append` redacts PII,
appends them to a local write-ahead log (fsync'd) and only then acknowledges. A background
thread turns the buffer into a segment every ``flush_interval_s`` or ``max_buffer`` events,
then trims the write-ahead log. If the actor dies, Ray restarts it (``max_restarts``) and
the constructor replays the write-ahead log, so an acknowledged event is never lost; a
replay may write an event twice, and consumers deduplicate by event id.

A plain class: ``ray.remote(...)`` is applied where it is started (:func:`start_event_writer`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from core.data.pii import PiiRedactor
from core.events import EventLog, WriteAheadLog
from schemas.events import EVENT_ADAPTER, Feedback, ServedOutput
from schemas.storage import StorageSettings

WRITER_NAME = "flywheel-event-writer"

log = logging.getLogger(__name__)


class EventWriter:
    """Acknowledged events are durable (write-ahead log) and reach the event log in order."""

    def __init__(
        self,
        log_uri: str,
        settings: dict[str, Any] | None = None,
        wal_dir: str | None = None,
        flush_interval_s: float = 1.0,
        max_buffer: int = 512,
    ) -> None:
        self.log = EventLog(log_uri, StorageSettings.model_validate(settings or {}))
        self.wal = WriteAheadLog(Path(wal_dir or default_wal_dir(log_uri)) / "events.wal")
        self.redactor = PiiRedactor()
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._buffer = self.wal.read_all()  # events acknowledged before a crash
        self.recovered = len(self._buffer)
        self.segments_written = 0
        self.events_written = 0
        self._stop = threading.Event()
        if self._buffer:
            self.flush()
        self._thread = threading.Thread(target=self._flush_loop, daemon=True)
        self._thread.start()

    def append(self, events: list[dict[str, Any]]) -> int:
        """Validate, redact and durably accept ``events``; returns how many."""
        parsed = [self._redact(EVENT_ADAPTER.validate_python(e)) for e in events]
        with self._lock:
            self.wal.append(parsed)
            self._buffer.extend(parsed)
            full = len(self._buffer) >= self.max_buffer
        if full:
            self.flush()
        return len(parsed)

    def flush(self) -> int:
        """Write what is buffered as one segment; returns its event count.

        Appends continue while the segment is written; only the flushed events leave the
        write-ahead log afterwards.
        """
        with self._flush_lock:
            with self._lock:
                pending, self._buffer = self._buffer, []
            if not pending:
                return 0
            try:
                self.log.append_segment(pending)
            except Exception:
                with self._lock:
                    self._buffer = pending + self._buffer
                raise
            with self._lock:
                self.wal.truncate(self._buffer)
            self.segments_written += 1
            self.events_written += len(pending)
            return len(pending)

    def stats(self) -> dict[str, int]:
        with self._lock:
            buffered = len(self._buffer)
        return {
            "pid": os.getpid(),  # changes when Ray restarts the actor
            "buffered": buffered,
            "segments_written": self.segments_written,
            "events_written": self.events_written,
            "recovered_on_start": self.recovered,
        }

    def close(self) -> int:
        """Flush and stop the background thread (call before shutting down)."""
        self._stop.set()
        return self.flush()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            try:
                self.flush()
            except Exception as e:  # storage hiccup: keep the buffer, try again next tick
                log.warning("flush failed, will retry: %s", e)

    def _redact(self, event: ServedOutput | Feedback) -> ServedOutput | Feedback:
        if isinstance(event, ServedOutput):
            return event.model_copy(
                update={
                    "prompt": self.redactor.redact(event.prompt)[0],
                    "completion": self.redactor.redact(event.completion)[0],
                    "user_text": self.redactor.redact(event.user_text)[0]
                    if event.user_text
                    else None,
                }
            )
        if event.correction:
            redacted = self.redactor.redact(event.correction)[0]
            return event.model_copy(update={"correction": redacted})
        return event


def default_wal_dir(log_uri: str) -> str:
    digest = hashlib.sha256(log_uri.encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / "flywheel-wal" / digest)


def writer_name(log_uri: str) -> str:
    """One writer per event log: segments of a log come from one ordered stream."""
    return f"{WRITER_NAME}-{hashlib.sha256(log_uri.encode()).hexdigest()[:12]}"


def start_event_writer(
    log_uri: str,
    settings: StorageSettings | None = None,
    namespace: str = "flywheel",
    **kwargs: Any,
) -> Any:
    """Get or start the named, restartable writer actor for ``log_uri``.

    It is pinned to the node that starts it (the head, normally), so a restarted writer
    finds its write-ahead log on the same disk.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor_cls = ray.remote(EventWriter).options(
        name=writer_name(log_uri),
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=-1,
        max_concurrency=16,
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=True
        ),
    )
    settings_json = settings.model_dump(mode="json") if settings else None
    handle = actor_cls.remote(log_uri, settings_json, **kwargs)
    ray.get(handle.stats.remote())  # wait until it is up
    return handle


def wait_for(handle: Any, timeout_s: float = 30.0) -> None:
    """Wait until a (possibly restarting) writer answers."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(handle.stats.remote(), timeout=5)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
