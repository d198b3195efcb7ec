"""Many prompts of one model decoded together, token by token, with one KV cache.

Prompts are left-padded, every row samples with its own settings (temperature, top-p, seed,
penalties), and a row that hits EOS, a stop string or its ``max_tokens`` stops producing
while the others go on. Each step yields the new text of every row, which is what makes
streaming and batching work together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class StepOutput:
    """New text of one row after one step."""

    text: str
    tokens: int
    finish_reason: str | None


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
        return all(r.finish_reason for r in self.rows)

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
        chosen = [self._sample(row, logits[i]) for i, row in enumerate(self.rows)]
        results = [self._advance(row, tok) for row, tok in zip(self.rows, chosen, strict=True)]
        self.next_input = torch.tensor(chosen, dtype=torch.long)[:, None]
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], 1)
        self.positions = self.positions[:, -1:] + 1
        return results

    def _sample(self, row: _Row, logits: torch.Tensor) -> int:
        if row.finish_reason:
            return self.m.pad_id
        p = row.params
        if p.penalized:  # before temperature and top-p, as vLLM applies them
            logits = apply_penalties(logits, row.tokens, p.presence_penalty, p.frequency_penalty)
        if p.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < p.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _advance(self, row: _Row, token: int) -> StepOutput:
        if row.finish_reason:
            return StepOutput("", 0, None)
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


def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator()
    g.manual_seed(seed)
    return g
