"""Reading raw files: byte-range splits, quarantine reasons, every format."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import storage
from core.data.readers import (
    InputSplit,
    detect_format,
    iter_lines,
    iter_stream_lines,
    plan_splits,
    read_split,
)


def read_all(path: Path, fmt: str, split_bytes: int = 1 << 30, limit: int = 1 << 20) -> list:
    root = storage.resolve(str(path.parent))
    entries = storage.list_files(root, path.name)
    out = []
    for split in plan_splits(entries, fmt, split_bytes):
        out.extend(read_split(split, root.join(split.relpath), "text", limit))
    return out


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    split=st.integers(1, 64),
    trailing_newline=st.booleans(),
)
def test_byte_range_splits_yield_every_line_once(lines, split, trailing_newline, tmp_path_factory):
    data = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    path = tmp_path_factory.mktemp("lines") / "f.jsonl"
    path.write_bytes(data)
    got = []
    with pa.OSFile(str(path)) as f:
        for start in range(0, len(data), split):
            got.extend(iter_lines(f, start, min(start + split, len(data)), limit=1000))
    # Only b"\n" ends a JSONL line; bytes.splitlines would also split on \r and \x1c-\x1e.
    assert [line for _, line in got] == io.BytesIO(data).readlines()
    assert [off for off, _ in got] == sorted({off for off, _ in got})


def test_quarantine_reasons(tmp_path: Path) -> None:
    lines = [
        json.dumps({"text": "good one"}).encode(),
        b'{"text": "truncated',
        b'{"text": "bad \xff\xfe bytes"}',
        json.dumps({"other": 1}).encode(),
        json.dumps({"text": 42}).encode(),
        json.dumps(["not", "an", "object"]).encode(),
        json.dumps({"text": "x" * 5000}).encode(),
        b"",
        json.dumps({"text": "last good"}).encode(),
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines))
    records = read_all(path, "auto", limit=1000)
    assert [(r.text, r.reason) for r in records] == [
        ("good one", None),
        (None, "invalid_json"),
        (None, "invalid_utf8"),
        (None, "missing_field"),
        (None, "not_text"),
        (None, "missing_field"),
        (None, "oversized"),
        ("last good", None),
    ]
    assert records[0].doc_id == "d.jsonl@0"
    assert records[6].length > 5000 and records[6].preview == ""


def test_oversized_line_is_not_buffered_and_splits_agree(tmp_path: Path) -> None:
    big = json.dumps({"text": "y" * (3 << 20)}).encode()
    data = b"\n".join([b'{"text": "a"}', big, b'{"text": "b"}']) + b"\n"
    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    for split_bytes in (1 << 20, 1 << 30):
        records = read_all(path, "jsonl", split_bytes=split_bytes, limit=1 << 20)
        assert [(r.text, r.reason) for r in records] == [
            ("a", None),
            (None, "oversized"),
            ("b", None),
        ]


def test_parquet_and_text(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["one", None, "three"]}), tmp_path / "p.parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "q.parquet")
    (tmp_path / "n.txt").write_text("plain note")
    (tmp_path / "bad.txt").write_bytes(b"\xff oops")
    p = read_all(tmp_path / "p.parquet", "auto")
    assert [(r.doc_id, r.text, r.reason) for r in p] == [
        ("p.parquet#0", "one", None),
        ("p.parquet#1", None, "not_text"),
        ("p.parquet#2", "three", None),
    ]
    assert [r.reason for r in read_all(tmp_path / "q.parquet", "auto")] == ["missing_field"]
    assert [(r.text, r.reason) for r in read_all(tmp_path / "n.txt", "auto")] == [
        ("plain note", None)
    ]
    assert [r.reason for r in read_all(tmp_path / "bad.txt", "auto")] == ["invalid_utf8"]
    assert [r.reason for r in read_all(tmp_path / "n.txt", "auto", limit=3)] == ["oversized"]


def test_plan_splits_cuts_only_large_jsonl() -> None:
    root = storage.resolve("/data")
    entries = [
        storage.FileEntry("a.jsonl", 25, root.join("a.jsonl")),
        storage.FileEntry("b.parquet", 100, root.join("b.parquet")),
    ]
    splits = plan_splits(entries, "auto", 10)
    assert [(s.index, s.relpath, s.start, s.end) for s in splits] == [
        (0, "a.jsonl", 0, 10),
        (1, "a.jsonl", 10, 20),
        (2, "a.jsonl", 20, 25),
        (3, "b.parquet", 0, 100),
    ]
    assert isinstance(splits[0], InputSplit)
    assert detect_format("X.NDJSON", "auto") == "jsonl" and detect_format("x.md", "auto") == "text"


def _compress(data: bytes, codec: str) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, codec) as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("suffix,codec", [(".gz", "gzip"), (".zst", "zstd"), (".bz2", "bz2")])
def test_compressed_jsonl_reads_as_its_plain_copy(tmp_path: Path, suffix, codec) -> None:
    """A gzipped corpus file was one quarantined text document; it is its records now, the
    same as the plain file's (the trailing blank line is no record), oversized one included."""
    lines = [json.dumps({"text": f"record {i}"}).encode() for i in range(300)]
    lines[7] = json.dumps({"text": "z" * 5000}).encode()
    data = b"\n".join([*lines, b'{"text": "cut', b""]) + b"\n"
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "part.jsonl").write_bytes(data)
    (tmp_path / f"part.jsonl{suffix}").write_bytes(_compress(data, codec))
    plain = read_all(tmp_path / "plain" / "part.jsonl", "auto", limit=1000)
    packed = read_all(tmp_path / f"part.jsonl{suffix}", "auto", split_bytes=64, limit=1000)
    view = [(r.text, r.reason, r.offset, r.length) for r in plain]
    assert [(r.text, r.reason, r.offset, r.length) for r in packed] == view
    assert (
        len(plain) == 301 and plain[7].reason == "oversized" and plain[-1].reason == "invalid_json"
    )
    assert packed[1].doc_id == f"part.jsonl{suffix}@{plain[1].offset}"


def test_stream_lines_hold_no_oversized_line(tmp_path: Path) -> None:
    data = b"a\n" + b"y" * (3 << 20) + b"\nb\n" + b"tail"
    got = list(iter_stream_lines(pa.BufferReader(data), limit=1000))
    assert got == [(0, b"a\n"), (2, (3 << 20) + 1), (2 + (3 << 20) + 1, b"b\n"),
                   (2 + (3 << 20) + 3, b"tail")]  # fmt: skip


def test_compressed_text_and_a_compressed_parquet(tmp_path: Path) -> None:
    (tmp_path / "note.txt.gz").write_bytes(_compress(b"a plain note", "gzip"))
    (tmp_path / "t.parquet.gz").write_bytes(_compress(b"PAR1...", "gzip"))
    assert [(r.text, r.reason) for r in read_all(tmp_path / "note.txt.gz", "auto")] == [
        ("a plain note", None)
    ]
    assert [r.reason for r in read_all(tmp_path / "note.txt.gz", "auto", limit=3)] == ["oversized"]
    assert [r.reason for r in read_all(tmp_path / "t.parquet.gz", "auto")] == ["not_text"]
    assert detect_format("x/part.JSONL.GZ", "auto") == "jsonl"
