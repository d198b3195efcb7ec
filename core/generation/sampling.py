"""Sampling settings of one request, and OpenAI's presence and frequency penalties."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

# Below this (but above 0, which is greedy) float32 logits / temperature overflow: measured,
# logits of +-43 give NaN probabilities from 1e-37, penalized ones (-4,096) from 1e-35. vLLM
# clamps anything under 0.01 up to 0.01; both engines refuse it instead, so they agree.
MIN_TEMPERATURE = 0.01
# What torch.Generator.manual_seed takes (negative seeds wrap around modulo 2**64).
TORCH_SEED_RANGE = (-(2**63), 2**64 - 1)


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

    def __post_init__(self) -> None:
        """Refuse what decoding cannot survive, so it fails this request as it is built (alone)
        and never a batch mid-step; the gateway's schema is narrower still."""
        t, (low, high) = self.temperature, TORCH_SEED_RANGE
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not (t == 0 or (t >= MIN_TEMPERATURE and math.isfinite(t))):
            raise ValueError(f"temperature must be 0 or at least {MIN_TEMPERATURE}, got {t}")
        if not 0 < self.top_p <= 1:  # NaN fails too: the nucleus would keep no token
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not low <= self.seed <= high:
            raise ValueError(f"seed must be from {low} to {high}, got {self.seed}")
        if not (math.isfinite(self.presence_penalty) and math.isfinite(self.frequency_penalty)):
            raise ValueError("presence_penalty and frequency_penalty must be finite")

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
