"""The event log: dense segments, offsets that never move, the write-ahead log."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.events import EventLog, Offset, WriteAheadLog
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
    with open(wal.path, "ab") as f:
        f.write(b'{"type": "served_output", "resp')  # a crash mid-write
    assert [e.response_id for e in wal.read_all()] == ["r0", "r1"]
    wal.truncate([served(1)])
    assert [e.response_id for e in wal.read_all()] == ["r1"]


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
