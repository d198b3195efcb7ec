"""Many prompts of one model decoded together, token by token, with one KV cache.

Prompts are left-padded, every row samples with its own settings (temperature, top-p, seed,
penalties), and a row that hits EOS, a stop string or its ``max_tokens`` stops producing
while the others go on. Each step yields the new text of every row, which is what makes
streaming and batching work together.

A row whose sampling fails (non-finite logits) ends with that error while the others go on;
:class:`RequestBatch` adds the same for requests of several versions gathered by a batcher:
a bad request, or a failed step of one version, fails only the requests it concerns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from core.generation.loading import LoadedModel
from core.generation.sampling import SamplingParams, apply_penalties


@dataclass
class _Row:
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    error: Exception | None = None

    @property
    def ended(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass
class StepOutput:
    """New text of one row after one step; ``error``: what ended the row, the step it did."""

    text: str
    tokens: int
    finish_reason: str | None
    error: Exception | None = None


class BatchDecoder:
    """Decodes a batch of prompts for one model, one token per :meth:`step`."""

    def __init__(
        self, loaded: LoadedModel, prompts: list[list[int]], params: list[SamplingParams]
    ) -> None:
        self.m = loaded
        self.rows = [_Row(p, s, _generator(s.seed)) for p, s in zip(prompts, params, strict=True)]
        longest = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), longest), loaded.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, longest - len(p) :] = torch.tensor(p)
            mask[i, longest - len(p) :] = 1
        self.next_input = ids
        self.mask = mask
        self.positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.past = None

    @property
    def done(self) -> bool:
        return all(r.ended for r in self.rows)

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        out = self.m.model(
            input_ids=self.next_input,
            attention_mask=self.mask,
            position_ids=self.positions,
            past_key_values=self.past,
            use_cache=True,
        )
        self.past = out.past_key_values
        logits = out.logits[:, -1, :].float()
        steps = [self._row_step(row, logits[i]) for i, row in enumerate(self.rows)]
        chosen = [token for token, _ in steps]
        self.next_input = torch.tensor(chosen, dtype=torch.long)[:, None]
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], 1)
        self.positions = self.positions[:, -1:] + 1
        return [result for _, result in steps]

    def _row_step(self, row: _Row, logits: torch.Tensor) -> tuple[int, StepOutput]:
        """One row's next token (the pad once it has ended) and what it adds."""
        if row.ended:
            return self.m.pad_id, StepOutput("", 0, None)
        try:
            token = self._sample(row, logits)
            return token, self._advance(row, token)
        except Exception as e:  # this row's fault (its logits, its settings): the rest go on
            row.error = e
            return self.m.pad_id, StepOutput("", 0, None, error=e)

    def _sample(self, row: _Row, logits: torch.Tensor) -> int:
        p = row.params
        if p.penalized:  # before temperature and top-p, as vLLM applies them
            logits = apply_penalties(logits, row.tokens, p.presence_penalty, p.frequency_penalty)
        if p.temperature == 0:
            return int(torch.argmax(_finite(logits)))
        probs = _finite(torch.softmax(logits / p.temperature, dim=-1))
        if p.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            # The first token always stays (0 < top_p): the nucleus is never empty.
            keep = sorted_p.cumsum(-1) - sorted_p < p.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _advance(self, row: _Row, token: int) -> StepOutput:
        if token in self.m.eos_ids:
            row.finish_reason = "stop"
            return self._emit(row, final=True, counted=0)
        row.tokens.append(token)
        row.text = self.m.tokenizer.decode(row.tokens, skip_special_tokens=True)
        for stop in row.params.stop:
            cut = row.text.find(stop)
            if cut >= 0:
                row.text, row.finish_reason = row.text[:cut], "stop"
                return self._emit(row, final=True, counted=1)
        if len(row.tokens) >= row.params.max_tokens:
            row.finish_reason = "length"
        return self._emit(row, final=row.finish_reason is not None, counted=1)

    def _emit(self, row: _Row, final: bool, counted: int) -> StepOutput:
        # Hold back text that could still become a stop string, and an incomplete UTF-8
        # character (decoded as U+FFFD) until the next token completes it.
        safe = len(row.text)
        if not final:
            hold = max((len(s) - 1 for s in row.params.stop), default=0)
            safe = max(row.emitted, len(row.text) - hold)
            if row.text.endswith("\ufffd"):
                safe = min(safe, len(row.text) - 1)
        piece = row.text[row.emitted : safe]
        row.emitted = max(row.emitted, safe)
        return StepOutput(piece, counted, row.finish_reason)


Item = tuple[LoadedModel, dict[str, Any]]  # a version and a generator request


def prepare(loaded: LoadedModel, request: dict[str, Any]) -> tuple[list[int], SamplingParams]:
    """A request's prompt and sampling settings, checked; raises what is wrong with them.

    Out-of-vocabulary ids are caught here: in the batch's forward pass they would fail
    every request of the version.
    """
    params = SamplingParams.from_request(request)  # raises for settings decoding can't take
    prompt = [int(t) for t in request["prompt_ids"]]
    vocab = _vocab_size(loaded.model)
    if not prompt:
        raise ValueError("empty prompt: prompt_ids has no token")
    if vocab is not None and not all(0 <= t < vocab for t in prompt):
        raise ValueError(f"prompt_ids outside the model's vocabulary [0, {vocab})")
    return prompt, params


class RequestBatch:
    """Requests gathered by a batcher (``@serve.batch``), decoded together, each failing alone.

    Requests are grouped per version, one :class:`BatchDecoder` each. :meth:`step` gives one
    output per request, in order: a chunk ``{"text", "tokens", "finish_reason"}``; the
    exception that ended the request (once: its own bad settings or prompt, a row error, or
    a failed step of its version's group); or ``StopIteration`` once it has ended.
    """

    def __init__(self, items: Sequence[Item]) -> None:
        self.size = len(items)
        self.groups: dict[str, list[int]] = {}  # version -> the requests it decodes
        self._pending: dict[int, Exception] = {}  # failures not yet reported
        self._ended: set[int] = set()
        rows: dict[str, list[tuple[list[int], SamplingParams]]] = {}
        models: dict[str, LoadedModel] = {}
        for i, (loaded, request) in enumerate(items):
            try:
                row = prepare(loaded, request)
            except Exception as e:  # this request's fault: it never joins a decoder
                self._pending[i] = e
                continue
            self.groups.setdefault(loaded.ref, []).append(i)
            rows.setdefault(loaded.ref, []).append(row)
            models[loaded.ref] = loaded
        self._decoders: dict[str, BatchDecoder] = {}
        for ref, group in rows.items():
            try:
                self._decoders[ref] = BatchDecoder(
                    models[ref], [p for p, _ in group], [s for _, s in group]
                )
            except Exception as e:  # reported by the first step, as the others' errors
                self._pending.update(dict.fromkeys(self.groups[ref], e))

    @property
    def done(self) -> bool:
        """Every request has had its last output (its last chunk or its error)."""
        return not self._pending and len(self._ended) == self.size

    def step(self) -> list[Any]:
        """One token more for every live request (see the class for what each output is)."""
        outputs: list[Any] = [StopIteration] * self.size
        for i, error in self._pending.items():
            outputs[i] = error
            self._ended.add(i)
        self._pending.clear()
        for ref, decoder in list(self._decoders.items()):
            try:
                step = decoder.step()
            except Exception as e:  # the forward pass failed: this version's requests only
                del self._decoders[ref]
                for i in self.groups[ref]:
                    if i not in self._ended:
                        outputs[i] = e
                        self._ended.add(i)
                continue
            for i, out in zip(self.groups[ref], step, strict=True):
                if i in self._ended:
                    continue
                outputs[i] = out.error if out.error is not None else _chunk(out)
                if out.error is not None or out.finish_reason:
                    self._ended.add(i)
            if decoder.done:
                del self._decoders[ref]
        return outputs


def _chunk(out: StepOutput) -> dict[str, Any]:
    """A step's output as the engines stream it (a plain dict: cheap to send)."""
    return {"text": out.text, "tokens": out.tokens, "finish_reason": out.finish_reason}


def _vocab_size(model: Any) -> int | None:
    """The ids the model embeds; None for a model that does not say (a test double)."""
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    return getattr(embeddings, "num_embeddings", None)


def _finite(values: torch.Tensor) -> torch.Tensor:
    """``values``, checked for NaN and +inf: raised here, for the row, before
    ``torch.multinomial`` (a device-side assert on CUDA, which poisons every later step)."""
    if bool(torch.isnan(values).any() or torch.isposinf(values).any()):
        raise FloatingPointError("non-finite logits: NaN or inf in the model's output")
    return values


def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator()
    g.manual_seed(seed)
    return g
