"""OpenAI's presence and frequency penalties: the formula, and the HF decoder applying it
(vLLM applies the same one: tests/integration/test_engines.py checks they agree)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from core.generation.decoder import BatchDecoder
from core.generation.loading import LoadedModel
from core.generation.sampling import SamplingParams, apply_penalties


def test_penalties_follow_openais_formula() -> None:
    logits = torch.zeros(5)
    out = apply_penalties(logits, [1, 1, 3], presence=0.5, frequency=0.25)
    # count * frequency + (count > 0) * presence, for generated tokens only
    assert out.tolist() == [0.0, -1.0, 0.0, -0.75, 0.0]
    assert apply_penalties(logits, [], 2.0, 2.0) is logits
    assert apply_penalties(logits, [1], 0.0, 0.0) is logits
    assert apply_penalties(logits, [2], -1.0, 0.0)[2] == 1.0  # negative: encourages repeats


class _Constant(torch.nn.Module):
    """Every step prefers token 5, then 6 (by 1.0): greedy repeats 5 unless penalized."""

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        logits = torch.full((input_ids.shape[0], input_ids.shape[1], 8), -10.0)
        logits[..., 5], logits[..., 6] = 2.0, 1.0
        return SimpleNamespace(logits=logits, past_key_values=None)


def _greedy(**penalties: float) -> list[int]:
    tokenizer = SimpleNamespace(decode=lambda ids, **_: " ".join(map(str, ids)))
    loaded = LoadedModel("m:1", _Constant(), tokenizer, frozenset({0}), 0)
    params = SamplingParams(max_tokens=4, temperature=0, **penalties)
    decoder = BatchDecoder(loaded, [[1, 2]], [params])
    while not decoder.done:
        decoder.step()
    return decoder.rows[0].tokens


def test_decoder_applies_penalties() -> None:
    assert _greedy() == [5, 5, 5, 5]
    assert _greedy(presence_penalty=2.0) == [5, 6, 5, 5]  # once both are seen, 5 leads again
    # Per occurrence: 5 stays ahead once (2 - 0.6 > 1), falls behind at two (2 - 1.2 < 1).
    assert _greedy(frequency_penalty=0.6) == [5, 5, 6, 5]


def test_generator_requests_carry_penalties() -> None:
    request = {"max_tokens": 3, "presence_penalty": 0.5, "frequency_penalty": None}
    params = SamplingParams.from_request(request)
    assert params.presence_penalty == 0.5 and params.frequency_penalty == 0.0
    assert params.penalized and not SamplingParams().penalized
