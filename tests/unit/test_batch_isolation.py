"""On the hf engine a bad request fails alone: its batch-mates decode on.

A tiny model is built from a config (nothing downloaded) and loaded without a registry. The
batch (:class:`core.generation.decoder.RequestBatch`) runs without Ray, and one test
drives the real ``@serve.batch`` of :class:`serve_apps.hf_engine.HFEngine` (Ray not started).
"""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from core.generation.decoder import RequestBatch
from core.generation.loading import LoadedModel
from tests.tinymodel import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_tiny_model(Path(tmp_path_factory.mktemp("tiny")) / "model")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = frozenset({tokenizer.eos_token_id})
    return LoadedModel("tiny:1", model, tokenizer, eos, tokenizer.pad_token_id)


def _request(n: int, **override: Any) -> dict[str, Any]:
    """The ``n``-th good request (seeded, sampled), with fields overridden."""
    request = {"prompt_ids": [3, 10 + n, 20], "max_tokens": 6, "temperature": 1.0, "seed": n}
    return {**request, **override}


def _run(items: list[tuple[LoadedModel, dict[str, Any]]]) -> list[list[Any]]:
    """Each request's outputs, in order, up to (not including) its StopIteration."""
    streams: list[list[Any]] = [[] for _ in items]
    ended = [False] * len(items)
    batch = RequestBatch(items)
    while not batch.done:
        step = batch.step()
        assert len(step) == len(items)  # @serve.batch requires one output per request
        for i, out in enumerate(step):
            if out is StopIteration:
                ended[i] = True
            else:
                assert not ended[i], "output after the end of the stream"
                streams[i].append(out)
    return streams


def _assert_finished(stream: list[Any]) -> str:
    """A stream of chunks only, ending with a reason; returns its text."""
    assert stream and all(isinstance(c, dict) for c in stream), stream
    assert stream[-1]["finish_reason"] in ("stop", "length")
    assert all(c["finish_reason"] is None for c in stream[:-1])
    return "".join(c["text"] for c in stream)


def _assert_failed(stream: list[Any], kind: type[Exception]) -> None:
    """The request's only output is its exception."""
    assert len(stream) == 1 and isinstance(stream[0], kind), stream


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        ({"seed": 2**64}, ValueError),  # torch's manual_seed overflows
        ({"temperature": 1e-40}, ValueError),  # logits / temperature overflow into NaN
        ({"top_p": 0.0}, ValueError),  # an empty nucleus
        ({"prompt_ids": [3, 10**6]}, ValueError),  # the forward pass would index out of range
        ({"prompt_ids": []}, ValueError),
        ({"max_tokens": None}, TypeError),
    ],
)
def test_a_bad_request_fails_alone(
    tiny: LoadedModel, bad: dict[str, Any], kind: type[Exception]
) -> None:
    requests = [_request(1), _request(2), _request(3, **bad), _request(4)]
    streams = _run([(tiny, r) for r in requests])
    _assert_failed(streams[2], kind)
    texts = [_assert_finished(streams[i]) for i in (0, 1, 3)]
    assert all(texts), texts
    # The others decode exactly as they would have without it: it never joined their batch.
    alone = _run([(tiny, requests[i]) for i in (0, 1, 3)])
    assert [_assert_finished(s) for s in alone] == texts


class _Spoiled(torch.nn.Module):
    """``tiny``'s model, with NaN logits for one row, or failing its ``fail_at``-th step."""

    def __init__(self, inner: torch.nn.Module, nan_row: int | None = None, fail_at: int = 0):
        super().__init__()
        self.inner, self.nan_row, self.fail_at, self.calls = inner, nan_row, fail_at, 0

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.inner.get_input_embeddings()

    def forward(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the forward pass failed")
        out = self.inner(**kwargs)
        if self.nan_row is not None and self.calls == 2:
            out.logits[self.nan_row] = float("nan")
        return out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_non_finite_logits_fail_their_row_only(tiny: LoadedModel, temperature: float) -> None:
    # The guard runs before torch.multinomial (which raises on CPU, asserts on CUDA).
    spoiled = LoadedModel("tiny:1", _Spoiled(tiny.model, nan_row=1), *_rest(tiny))
    items = [(spoiled, _request(i, temperature=temperature)) for i in range(3)]
    streams = _run(items)
    assert isinstance(streams[1][0], dict)  # its first token came before the NaNs
    _assert_failed(streams[1][1:], FloatingPointError)
    for i in (0, 2):
        assert _assert_finished(streams[i])


def test_a_failed_step_fails_only_its_versions_requests(tiny: LoadedModel) -> None:
    broken = LoadedModel("tiny:2", _Spoiled(tiny.model, fail_at=3), *_rest(tiny))
    items = [(tiny, _request(0)), (broken, _request(1)), (tiny, _request(2)), (broken, _request(3))]
    batch = RequestBatch(items)
    assert batch.groups == {"tiny:1": [0, 2], "tiny:2": [1, 3]}
    streams = _run(items)
    for i in (1, 3):
        assert [type(c) for c in streams[i]] == [dict, dict, RuntimeError]
    for i in (0, 2):
        assert _assert_finished(streams[i])


def test_a_batch_of_only_bad_requests_reports_every_error(tiny: LoadedModel) -> None:
    streams = _run([(tiny, _request(0, seed=2**64)), (tiny, _request(1, top_p=2.0))])
    for stream in streams:
        _assert_failed(stream, ValueError)


def _rest(loaded: LoadedModel) -> tuple[Any, frozenset[int], int]:
    return loaded.tokenizer, loaded.eos_ids, loaded.pad_id


@pytest.fixture
def hf_engine(monkeypatch: pytest.MonkeyPatch) -> Any:
    """An HFEngine whose real ``@serve.batch`` runs in this process, Ray not started.

    The batch queue reads one deployment setting from the replica context: stood in for.
    The queue binds to the event loop it starts on, so it is dropped afterwards.
    """
    from ray import serve

    from serve_apps.hf_engine import HFEngine

    config = types.SimpleNamespace(max_ongoing_requests=64)
    context = types.SimpleNamespace(_deployment_config=config)
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    engine = object.__new__(HFEngine)
    engine._metrics = types.SimpleNamespace(observe=lambda *_, **__: None)
    queue = HFEngine._batch.set_max_batch_size.__self__  # the lazy queue of the decorator
    queue.batch_wait_timeout_s = 0.2  # all four requests land in one batch
    yield engine
    queue._queue = None


def test_through_serve_batch_only_the_bad_caller_raises(tiny: LoadedModel, hf_engine: Any) -> None:
    async def collect(request: dict[str, Any]) -> list[Any]:
        try:
            return [chunk async for chunk in hf_engine.stream(tiny, request)]
        except ValueError as e:  # @serve.batch hands the exception over; stream raises it
            return [e]

    async def main() -> list[list[Any]]:
        requests = [_request(1), _request(2, seed=2**64), _request(3), _request(4)]
        return await asyncio.gather(*(collect(r) for r in requests))

    streams = asyncio.run(main())
    _assert_failed(streams[1], ValueError)
    for i in (0, 2, 3):
        assert _assert_finished(streams[i])
