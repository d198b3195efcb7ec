"""Markdown building blocks of a model card: record strings escaped for tables and HTML,
numbers formatted, tables, and a missing fact spelled "not recorded"."""

from __future__ import annotations

import math
from typing import Any

NOT_RECORDED = "not recorded"


def md(value: Any) -> str:
    """A record's string, safe in a markdown table cell and free of raw HTML."""
    text = NOT_RECORDED if value is None else str(value)
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("\n", " ")
    )


def num(value: Any, percent: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return md(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if percent:
        return f"{value:.2%}"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def by_reason(counts: dict[str, int] | None) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{md(k)} {v:,}" for k, v in sorted(counts.items()))


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""]


def dig(scores: Any, path: tuple[str, ...]) -> Any:
    """``scores[path[0]][path[1]]...``, or None where a level is missing."""
    for key in path:
        scores = scores.get(key) if isinstance(scores, dict) else None
    return scores
