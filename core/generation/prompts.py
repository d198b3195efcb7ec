"""Prompts read from files for batch generation: one row per prompt, never dying on a bad one.

Files are planned into splits as the ingest reader does (:func:`core.data.readers.plan_splits`:
JSONL in byte ranges, compressed JSONL and Parquet whole). A row is
``{"id", "prompt", "messages", "error"}``: ``prompt`` a string sent as it is, or ``messages``
(JSON) a chat rendered with the model's template; a row that has neither, or cannot be
parsed, keeps its id and says why in ``error`` (it is written out, not generated for).

A row's id is the ``id_field`` value where one is configured, else where the row was read
(``path@byte_offset``, ``path#row``): stable across runs, which is what resuming relies on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from core.data.readers import InputSplit, iter_lines, iter_stream_lines
from core.storage import Location

MAX_LINE_BYTES = 4 << 20


def prompt_row(
    obj: Any, where: str, prompt_field: str, messages_field: str, id_field: str | None
) -> dict[str, str]:
    """A parsed record as a prompt row (``error`` says what is wrong with it, or is empty)."""
    row = {"id": where, "prompt": "", "messages": "", "error": ""}
    if not isinstance(obj, dict):
        row["error"] = f"not an object: {type(obj).__name__}"
        return row
    if id_field is not None:
        if obj.get(id_field) is None:
            row["error"] = f"no {id_field!r} field"
            return row
        row["id"] = str(obj[id_field])
    prompt, messages = obj.get(prompt_field), obj.get(messages_field)
    if isinstance(prompt, str) and prompt:
        row["prompt"] = prompt
    elif _is_chat(messages):
        row["messages"] = json.dumps(messages, ensure_ascii=False)
    else:
        row["error"] = f"no {prompt_field!r} string or {messages_field!r} list of turns"
    return row


def _is_chat(messages: Any) -> bool:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        )
    )


def read_prompts(
    split: InputSplit,
    loc: Location,
    prompt_field: str = "prompt",
    messages_field: str = "messages",
    id_field: str | None = None,
) -> Iterator[dict[str, str]]:
    """The prompt rows of one split (``loc`` is the split's file)."""
    fields = (prompt_field, messages_field, id_field)
    if split.format == "parquet" and not split.compression:
        yield from _parquet_rows(split, loc, *fields)
    elif split.format == "jsonl":
        yield from _jsonl_rows(split, loc, *fields)
    else:
        where = split.relpath
        detail = "compressed Parquet" if split.format == "parquet" else "not JSONL or Parquet"
        yield {"id": where, "prompt": "", "messages": "", "error": f"unreadable file: {detail}"}


def _jsonl_rows(
    split: InputSplit, loc: Location, prompt_field: str, messages_field: str, id_field: str | None
) -> Iterator[dict[str, str]]:
    if split.compression:
        opened = loc.fs.open_input_stream(loc.path, compression=split.compression)
    else:
        opened = loc.fs.open_input_file(loc.path)
    with opened as f:
        lines = (
            iter_stream_lines(f, MAX_LINE_BYTES)
            if split.compression
            else iter_lines(f, split.start, split.end, MAX_LINE_BYTES)
        )
        for offset, line in lines:
            if isinstance(line, bytes) and not line.strip():
                continue  # a blank line (often the last) is no prompt
            yield _jsonl_row(
                line, f"{split.relpath}@{offset}", prompt_field, messages_field, id_field
            )


def _jsonl_row(
    line: bytes | int, where: str, prompt_field: str, messages_field: str, id_field: str | None
) -> dict[str, str]:
    bad = {"id": where, "prompt": "", "messages": "", "error": ""}
    if isinstance(line, int):
        bad["error"] = f"oversized: {line} bytes > {MAX_LINE_BYTES}"
        return bad
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        bad["error"] = f"invalid JSON: {e}"[:300]
        return bad
    return prompt_row(obj, where, prompt_field, messages_field, id_field)


def _parquet_rows(
    split: InputSplit, loc: Location, prompt_field: str, messages_field: str, id_field: str | None
) -> Iterator[dict[str, str]]:
    with loc.fs.open_input_file(loc.path) as f:
        pf = pq.ParquetFile(f)
        wanted = [c for c in (prompt_field, messages_field, id_field) if c]
        columns = [c for c in wanted if c in pf.schema_arrow.names]
        row = 0
        for batch in pf.iter_batches(columns=columns, batch_size=4096):
            for obj in batch.to_pylist():
                where = f"{split.relpath}#{row}"
                yield prompt_row(obj, where, prompt_field, messages_field, id_field)
                row += 1
