"""The event log: dense segments, offsets that never move, the write-ahead log."""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.events import EventLog, Offset
from core.wal import MAGIC, WalError, WriteAheadLog, frame
from schemas.events import Feedback, ServedOutput, parse_event


def served(i: int) -> ServedOutput:
    return ServedOutput(
        response_id=f"r{i}",
        model="m",
        model_version="m:1",
        endpoint="completions",
        prompt="p",
        completion=f"c{i}",
        prompt_tokens=1,
        completion_tokens=1,
        finish_reason="stop",
        latency_ms=1.0,
    )


def test_segments_and_offsets(store) -> None:
    log = EventLog(store.uri("events"), store.settings)
    assert list(log.read()) == []
    assert log.append_segment([served(0), served(1)]) == 1
    assert log.append_segment([Feedback(response_id="r0", rating=5)]) == 2
    items = list(log.read())
    assert [type(e).__name__ for _, e in items] == ["ServedOutput", "ServedOutput", "Feedback"]
    assert [o for o, _ in items] == [Offset(1, 1), Offset(2, 0), Offset(3, 0)]
    # Reading from an offset gives exactly what came after it, now and later.
    assert [e.response_id for _, e in log.read(Offset(1, 1))] == ["r1", "r0"]
    log.append_segment([served(2)])
    assert [e.response_id for _, e in log.read(items[-1][0])] == ["r2"]
    assert [e.response_id for _, e in log.read(limit=2)] == ["r0", "r1"]
    with pytest.raises(ValueError):
        log.append_segment([])


def test_parse_event_rejects_unknown_types_and_fields() -> None:
    assert parse_event(served(1).model_dump_json()).response_id == "r1"
    with pytest.raises(ValueError):
        parse_event('{"type": "other"}')
    with pytest.raises(ValueError):
        parse_event(served(1).model_dump_json()[:-1] + ', "extra": 1}')
    with pytest.raises(ValueError):
        Feedback(response_id="x", rating=0)


def test_write_ahead_log_roundtrip_and_torn_tail(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "w" / "events.wal")
    assert wal.read_all() == []
    wal.append([served(0), served(1)])
    whole = wal.path.stat().st_size
    with open(wal.path, "ab") as f:
        f.write(frame(served(2))[:-7])  # a crash mid-write
    assert [e.response_id for e in wal.read_all()] == ["r0", "r1"]
    # Recovery cuts the torn tail, so the next record cannot glue onto it and be lost.
    assert [e.response_id for e in wal.recover()] == ["r0", "r1"]
    assert wal.path.stat().st_size == whole and wal.torn_bytes > 0
    wal.append([served(3)])
    assert [e.response_id for e in wal.read_all()] == ["r0", "r1", "r3"]
    wal.truncate([served(1)])
    assert [e.response_id for e in wal.read_all()] == ["r1"]


def test_a_corrupt_record_ends_what_is_read(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "events.wal")
    wal.append([served(0), served(1), served(2)])
    data = bytearray(wal.path.read_bytes())
    data[len(frame(served(0))) + 20] ^= 0xFF  # a flipped bit in the second record
    wal.path.write_bytes(bytes(data))
    assert [e.response_id for e in wal.recover()] == ["r0"]


def test_a_failed_append_keeps_nothing_and_the_next_one_is_whole(
    tmp_path: Path, monkeypatch
) -> None:
    import core.wal

    wal = WriteAheadLog(tmp_path / "events.wal")
    wal.append([served(0)])
    size = wal.path.stat().st_size
    real_fsync = os.fsync
    calls = {"n": 0}

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EIO, "I/O error")  # the write reached the file, fsync failed
        real_fsync(fd)

    monkeypatch.setattr(core.wal.os, "fsync", failing_fsync)
    with pytest.raises(WalError):
        wal.append([served(1), served(2)])
    assert wal.path.stat().st_size == size, "the failed append's bytes were cut off"
    wal.append([served(3)])
    assert [e.response_id for e in wal.read_all()] == ["r0", "r3"]


def test_an_append_whose_cut_fails_stops_the_log_until_recovered(tmp_path, monkeypatch) -> None:
    import core.wal

    wal = WriteAheadLog(tmp_path / "events.wal")
    monkeypatch.setattr(core.wal.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("EIO")))
    with pytest.raises(WalError):
        wal.append([served(0)])  # fsync fails, and so does the cut's fsync
    monkeypatch.undo()
    with pytest.raises(WalError, match="recover"):
        wal.append([served(1)])
    wal.recover()
    wal.append([served(2)])
    assert "r2" in [e.response_id for e in wal.read_all()]


def test_a_wal_from_before_framing_is_read(tmp_path: Path) -> None:
    path = tmp_path / "events.wal"
    path.write_bytes((served(0).model_dump_json() + "\n" + '{"type": "serv').encode())
    wal = WriteAheadLog(path)
    assert [e.response_id for e in wal.recover()] == ["r0"]
    wal.truncate(wal.read_all())
    assert path.read_bytes().startswith(MAGIC)


def test_writer_redacts_flushes_and_recovers(tmp_path: Path) -> None:
    from actors.event_writer import EventWriter

    log_uri = str(tmp_path / "log")
    writer = EventWriter(log_uri, None, str(tmp_path / "wal"), flush_interval_s=3600)
    event = served(0).model_copy(update={"prompt": "mail bob@example.com"})
    assert writer.append([event.model_dump(mode="json")]) == 1
    assert list(EventLog(log_uri).read()) == []  # buffered, but in the write-ahead log
    again = EventWriter(log_uri, None, str(tmp_path / "wal"), flush_interval_s=3600)
    assert again.stats()["recovered_on_start"] == 1  # a crash here loses nothing
    ((_, got),) = list(EventLog(log_uri).read())
    assert got.prompt == "mail <EMAIL>"
    assert writer.close() == 1  # the first writer flushes too: a duplicate, same event id
    ids = [e.event_id for _, e in EventLog(log_uri).read()]
    assert len(ids) == 2 and len(set(ids)) == 1


class Outage:
    """Object storage that is down until ``up()``: segment writes fail as S3 errors would."""

    def __init__(self, monkeypatch) -> None:
        self.down = True
        self.failed = 0
        real = EventLog.append_segment

        def append_segment(log: EventLog, events: list) -> int:
            if self.down:
                self.failed += 1
                raise OSError("object storage unreachable")
            return real(log, events)

        monkeypatch.setattr(EventLog, "append_segment", append_segment)

    def up(self) -> None:
        self.down = False


def test_writer_through_an_outage_loses_and_repeats_nothing(tmp_path: Path, monkeypatch) -> None:
    from actors.event_writer import EventWriter, WriterFull

    log_uri, wal = str(tmp_path / "log"), str(tmp_path / "wal")
    first = EventWriter(log_uri, None, wal, flush_interval_s=3600, max_buffer=2)
    first.append([served(0).model_dump(mode="json")])
    del first  # a crash with one acknowledged event in the write-ahead log
    outage = Outage(monkeypatch)
    # It starts during the outage (its recovery flush fails) instead of failing to start.
    writer = EventWriter(log_uri, None, wal, flush_interval_s=3600, max_buffer=2,
                         max_buffered=4)  # fmt: skip
    acknowledged, shed = ["r0"], []
    for i in range(1, 8):
        try:
            # A full buffer flushes, fails, and still acknowledges: the event is durable.
            writer.append([served(i).model_dump(mode="json")])
            acknowledged.append(f"r{i}")
        except WriterFull:
            shed.append(f"r{i}")  # refused before anything was written
    assert outage.failed >= 2 and len(acknowledged) == 4 and len(shed) == 4
    assert writer.stats()["shed"] == 4
    outage.up()
    assert writer.flush() == 4
    found = [e.response_id for _, e in EventLog(log_uri).read()]
    assert sorted(found) == sorted(acknowledged), "every acknowledged event, none twice"
    assert not set(shed) & set(found)
    writer.close()


def test_with_acks_store_an_acknowledged_event_is_in_object_storage(
    tmp_path: Path, monkeypatch
) -> None:
    """``acks="store"``: an append returns once its events are in a segment, so losing the
    node's disk (the write-ahead log with it) loses nothing acknowledged."""
    from actors.event_writer import EventWriter, NotDurable

    log_uri, wal = str(tmp_path / "log"), str(tmp_path / "wal")
    # No background flush for an hour: only the appends' group commits write segments.
    writer = EventWriter(log_uri, None, wal, flush_interval_s=3600, acks="store",
                         ack_timeout_s=2, commit_linger_s=0.05)  # fmt: skip
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: writer.append([served(i).model_dump(mode="json")]), range(16)))
    found = sorted(e.response_id for _, e in EventLog(log_uri).read())
    assert found == sorted(f"r{i}" for i in range(16))
    assert writer.stats()["segments_written"] < 16, "concurrent appends share a segment"
    outage = Outage(monkeypatch)
    event = served(99).model_dump(mode="json")
    with pytest.raises(NotDurable, match="not in object storage"):
        writer.append([event])
    outage.up()
    writer.append([event])  # the client's retry
    copies = {e.event_id for _, e in EventLog(log_uri).read() if e.response_id == "r99"}
    assert len(copies) == 1, "a retry may log it twice, always with the same event id"
    writer.close()
