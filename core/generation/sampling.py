"""Sampling settings of one request, and OpenAI's presence and frequency penalties."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples; the fields and their meaning are OpenAI's."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> SamplingParams:
        """The sampling fields of a generator request (what the gateway sends)."""
        return cls(
            max_tokens=int(request["max_tokens"]),
            temperature=float(request.get("temperature", 1.0)),
            top_p=float(request.get("top_p", 1.0)),
            stop=tuple(request.get("stop") or ()),
            seed=request.get("seed"),
            presence_penalty=float(request.get("presence_penalty") or 0.0),
            frequency_penalty=float(request.get("frequency_penalty") or 0.0),
        )

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0


def apply_penalties(
    logits: torch.Tensor, generated: list[int], presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's penalties on one row's next-token logits (a 1-d tensor over the vocabulary).

    ``logit[j] - count[j] * frequency - (count[j] > 0) * presence``, where ``count`` counts
    the tokens generated so far. The prompt does not count: OpenAI and vLLM (whose engine
    must agree with ours) penalize only the output.
    """
    if not generated or (presence == 0 and frequency == 0):
        return logits
    ids = torch.tensor(generated, dtype=torch.long, device=logits.device)
    counts = torch.bincount(ids, minlength=logits.shape[-1]).to(logits.dtype)
    return logits - counts * frequency - (counts > 0).to(logits.dtype) * presence
