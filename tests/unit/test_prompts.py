"""Prompt rows for batch generation (core.generation.prompts) and the batch engines' helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core import storage
from core.data.readers import plan_splits
from core.generation.batch import row_seed
from core.generation.prompts import prompt_row, read_prompts


def rows_of(folder: Path, split_bytes: int = 1 << 20, **fields) -> list[dict]:
    files = storage.list_files(storage.resolve(str(folder)))
    out = []
    for split in plan_splits(files, "auto", split_bytes):
        loc = next(f.location for f in files if f.relpath == split.relpath)
        out.extend(read_prompts(split, loc, **fields))
    return out


def test_a_row_is_a_prompt_a_chat_or_an_error_with_its_reason() -> None:
    chat = [{"role": "user", "content": "hi"}]
    assert prompt_row({"prompt": "Hello"}, "f@0", "prompt", "messages", None)["prompt"] == "Hello"
    row = prompt_row({"messages": chat}, "f@0", "prompt", "messages", None)
    assert json.loads(row["messages"]) == chat and not row["error"]
    for bad in ({"prompt": 3}, {"messages": [{"role": "user"}]}, {"prompt": ""}, [1, 2]):
        assert prompt_row(bad, "f@0", "prompt", "messages", None)["error"], bad
    keyed = prompt_row({"id": 7, "prompt": "x"}, "f@0", "prompt", "messages", "id")
    assert keyed["id"] == "7"
    assert "no 'id'" in prompt_row({"prompt": "x"}, "f@0", "prompt", "messages", "id")["error"]


def test_jsonl_in_byte_ranges_gives_each_line_once_blank_lines_skipped(tmp_path) -> None:
    lines = [json.dumps({"prompt": f"prompt number {i} " + "x" * (i % 7)}) for i in range(200)]
    text = "\n".join(lines[:100]) + "\n\n" + "\n".join(lines[100:]) + "\n\n"
    (tmp_path / "p.jsonl").write_text(text)
    whole = rows_of(tmp_path)
    split = rows_of(tmp_path, split_bytes=1 << 12)  # 3 ranges
    assert [r["prompt"] for r in split] == [json.loads(line)["prompt"] for line in lines]
    assert [r["id"] for r in split] == [r["id"] for r in whole]
    assert len({r["id"] for r in split}) == 200 and not any(r["error"] for r in split)


def test_parquet_chats_and_a_broken_line_keep_their_ids(tmp_path) -> None:
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    pq.write_table(pa.table({"messages": chats}), tmp_path / "c.parquet")
    (tmp_path / "b.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    rows = rows_of(tmp_path)
    assert [r["id"] for r in rows] == [
        "b.jsonl@0",
        "b.jsonl@17",
        *(f"c.parquet#{i}" for i in range(3)),
    ]
    assert rows[1]["error"].startswith("invalid JSON")
    assert json.loads(rows[4]["messages"])[0]["content"] == "q2"


def test_row_seeds_are_stable_per_row_and_differ_between_rows() -> None:
    assert row_seed(None, "a") is None
    assert row_seed(7, "a@0") == row_seed(7, "a@0") != row_seed(7, "a@1")
    assert row_seed(7, "a@0") != row_seed(8, "a@0")
