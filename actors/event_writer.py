"""The event writer: buffers served-output and feedback events into log segments.

Callers (gateway replicas) send batches of events; :meth:`EventWriter.append` redacts PII,
appends them to a local write-ahead log (framed, fsync'd: ``core.wal``) and only then
acknowledges. A background thread turns the buffer into a segment every ``flush_interval_s``
or ``max_buffer`` events, then trims the write-ahead log. If the actor dies, Ray restarts it
(``max_restarts``) and the constructor replays the write-ahead log (a torn tail cut off), so
an acknowledged event is never lost; a replay may write an event twice, and consumers
deduplicate by event id.

Where an acknowledgement is given is ``acks`` (Kafka's word for the same choice):

- ``"wal"``: once the event is in the local write-ahead log. Fast; survives a crash of the
  writer, a restart of the node's Ray and a reboot, but not the loss of the node's disk
  (events not flushed yet, about ``flush_interval_s`` of them, go with it).
- ``"store"``: once the event is in a segment in object storage (a group commit: the events
  of concurrent appends share one segment, written ``commit_linger_s`` after the first).
  Survives the loss of the node; costs a segment write of latency.

With ``acks="wal"`` an append either acknowledges or raises with nothing kept, never both:
past ``max_buffered`` events (object storage down for long) it sheds with
:class:`WriterFull` before writing anything, and once an event is in the write-ahead log a
failed flush is left to the background thread. With ``acks="store"`` an append that could
not reach a segment in ``ack_timeout_s`` raises :class:`NotDurable` with the event still
in the write-ahead log: a retry may log it twice, and consumers keep one (by event id, and
one rating per response). The writer starts during a storage outage too and flushes what
it recovered when storage returns.

A plain class: ``ray.remote(...)`` is applied where it is started (:func:`start_event_writer`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from core.data.pii import PiiRedactor
from core.events import EventLog
from core.wal import WriteAheadLog
from schemas.events import EVENT_ADAPTER, Feedback, ServedOutput
from schemas.storage import StorageSettings

WRITER_NAME = "flywheel-event-writer"

log = logging.getLogger(__name__)


class WriterFull(RuntimeError):
    """Shed before anything was written: the buffer is full (storage down); retry later."""

    retry_after_s = 5


class NotDurable(WriterFull):
    """``acks="store"``: the events did not reach object storage in time (kept locally)."""


class EventWriter:
    """Acknowledged events are durable (write-ahead log) and reach the event log in order."""

    def __init__(
        self,
        log_uri: str,
        settings: dict[str, Any] | None = None,
        wal_dir: str | None = None,
        flush_interval_s: float = 1.0,
        max_buffer: int = 512,
        max_buffered: int = 100_000,
        acks: str = "wal",
        ack_timeout_s: float = 10.0,
        commit_linger_s: float = 0.02,
    ) -> None:
        if acks not in ("wal", "store"):
            raise ValueError(f"acks must be 'wal' or 'store', not {acks!r}")
        self.log = EventLog(log_uri, StorageSettings.model_validate(settings or {}))
        folder = Path(wal_dir).expanduser() if wal_dir else default_wal_dir(log_uri)
        self.wal = WriteAheadLog(folder / "events.wal")
        self.redactor = PiiRedactor()
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.max_buffered = max_buffered
        self.acks, self.ack_timeout_s, self.commit_linger_s = acks, ack_timeout_s, commit_linger_s
        self._lock = threading.Lock()
        self._durable = threading.Condition(self._lock)  # a segment was written
        self._wake = threading.Event()  # an append waits on a segment: flush now
        self._flush_lock = threading.Lock()
        self._buffer = self.wal.recover()  # events acknowledged before a crash
        self.recovered = len(self._buffer)
        # Events appended and events in segments, counted alike: ``_flushed >= n`` says the
        # n-th event appended (since start, recovered ones first) is in object storage.
        self._appended, self._flushed = self.recovered, 0
        self.segments_written = 0
        self.events_written = 0
        self.shed = 0
        self._stop = threading.Event()
        if self._buffer:
            self._try_flush()  # storage may be down: the background thread retries
        self._thread = threading.Thread(target=self._flush_loop, daemon=True)
        self._thread.start()

    def append(self, events: list[dict[str, Any]]) -> int:
        """Validate, redact and durably accept ``events``; returns how many. Raises
        :class:`WriterFull` or ``core.wal.WalError`` with none of them kept."""
        parsed = [self._redact(EVENT_ADAPTER.validate_python(e)) for e in events]
        with self._lock:
            if len(self._buffer) + len(parsed) > self.max_buffered:
                self.shed += len(parsed)
                raise WriterFull(
                    f"event writer holds {len(self._buffer)} unflushed events "
                    f"(limit {self.max_buffered}): object storage is not taking segments"
                )
            self.wal.append(parsed)
            self._buffer.extend(parsed)
            self._appended += len(parsed)
            mine = self._appended
            full = len(self._buffer) >= self.max_buffer
        if self.acks == "store":
            self._wait_durable(mine)
        elif full:
            self._try_flush()  # acknowledged already: a failure here is the thread's to retry
        return len(parsed)

    def _wait_durable(self, upto: int) -> None:
        self._wake.set()
        with self._durable:
            if not self._durable.wait_for(lambda: self._flushed >= upto, self.ack_timeout_s):
                raise NotDurable(
                    f"events not in object storage after {self.ack_timeout_s:.0f} s "
                    "(kept in the write-ahead log; a retry may log them twice)"
                )

    def _try_flush(self) -> None:
        try:
            self.flush()
        except Exception as e:
            log.warning("flush failed, will retry: %s", e)

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
                self._flushed += len(pending)
                self._durable.notify_all()
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
            "torn_bytes_on_start": self.wal.torn_bytes,
            "shed": self.shed,
        }

    def close(self) -> int:
        """Flush and stop the background thread (call before shutting down)."""
        self._stop.set()
        self._wake.set()
        return self.flush()

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(self.flush_interval_s):
                self._wake.clear()
                time.sleep(self.commit_linger_s)  # let concurrent appends join the segment
            self._try_flush()  # storage hiccup: keep the buffer, try again next tick

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


def default_wal_dir(log_uri: str) -> Path:
    """A folder per event log under the user's state directory (XDG): unlike /tmp, a
    reboot keeps it, so acknowledged events still unflushed then are not lost."""
    digest = hashlib.sha256(log_uri.encode()).hexdigest()[:16]
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "flywheel" / "wal" / digest


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

    It is pinned to the head node (the node that starts it where there is no head, as in a
    client-less test), so a restarted writer finds its write-ahead log on the same disk: the
    head is the one node a cluster keeps, and where the RayService mounts the WAL's volume.
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
        max_concurrency=64,  # appends with acks="store" wait for their segment
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(_head_node_id(), soft=True),
    )
    settings_json = settings.model_dump(mode="json") if settings else None
    handle = actor_cls.remote(log_uri, settings_json, **kwargs)
    ray.get(handle.stats.remote())  # wait until it is up
    return handle


def _head_node_id() -> str:
    import ray

    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return node["NodeID"]
    return ray.get_runtime_context().get_node_id()


def flush_all(namespace: str = "flywheel") -> dict[str, int]:
    """Flush every event writer of this Ray cluster into segments: events flushed by writer.
    What a node about to go away runs (the RayService head's preStop hook), so the events
    in its write-ahead log are in object storage before the log's disk is gone."""
    import ray
    from ray.util import list_named_actors

    flushed = {}
    for entry in list_named_actors(all_namespaces=True):
        if entry["namespace"] == namespace and entry["name"].startswith(WRITER_NAME):
            handle = ray.get_actor(entry["name"], namespace=namespace)
            flushed[entry["name"]] = ray.get(handle.flush.remote(), timeout=60)
    return flushed


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
