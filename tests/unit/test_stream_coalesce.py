"""The generator merges per-token chunks: the first goes at once, then at most one per
interval, the last carries the finish reason; no text or token count is lost."""

from __future__ import annotations

import asyncio

from serve_apps.generator import coalesce


async def _engine(n: int, gap_s: float):
    for i in range(n):
        await asyncio.sleep(gap_s)
        yield {"text": f"t{i} ", "tokens": 1, "finish_reason": "length" if i == n - 1 else None}


def _run(n: int, gap_s: float, interval_s: float) -> list[dict]:
    async def go() -> list[dict]:
        return [c async for c in coalesce(_engine(n, gap_s), interval_s)]

    return asyncio.run(go())


def test_chunks_are_merged_without_loss() -> None:
    out = _run(40, 0.002, 0.05)
    assert out[0] == {"text": "t0 ", "tokens": 1, "finish_reason": None}  # first token at once
    assert len(out) < 10
    assert "".join(c["text"] for c in out) == "".join(f"t{i} " for i in range(40))
    assert sum(c["tokens"] for c in out) == 40
    assert out[-1]["finish_reason"] == "length"
    assert all(c["finish_reason"] is None for c in out[:-1])


def test_zero_interval_passes_every_chunk() -> None:
    out = _run(5, 0, 0)
    assert [c["text"] for c in out] == [f"t{i} " for i in range(5)]
