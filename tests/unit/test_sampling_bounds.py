"""The sampling fields' bounds: every boundary, the value on it accepted and the one past it
refused with a message (what the gateway's 400 says) that gives the whole range."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from core.generation.decoder import BatchDecoder
from core.generation.loading import LoadedModel
from core.generation.sampling import TORCH_SEED_RANGE, SamplingParams
from schemas.openai import ChatCompletionRequest, ChatMessage, CompletionRequest
from serve_apps.decode import describe

SEED_MAX = 2**63 - 1


def _completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "tiny:1", "prompt": "hi", **fields})


def _refused(**fields: Any) -> str:
    """The 400 message the gateway would send for this body."""
    with pytest.raises(ValidationError) as caught:
        _completion(**fields)
    return describe(caught.value.errors())


@pytest.mark.parametrize(
    ("field", "accepted"),
    [
        ("temperature", [0, 0.0, 0.01, 1.0, 2]),
        ("top_p", [1e-9, 0.5, 1]),
        ("seed", [None, 0, 1, SEED_MAX]),
        ("presence_penalty", [-2, 0, 2, None]),
        ("frequency_penalty", [-2, 0, 2, None]),
    ],
)
def test_values_on_the_bounds_are_accepted(field: str, accepted: list[Any]) -> None:
    for value in accepted:
        assert getattr(_completion(**{field: value}), field) == value


@pytest.mark.parametrize(
    ("field", "refused", "says"),
    [
        (
            "temperature",
            [-0.01, 1e-40, 1e-5, 0.0099, 2.01, math.inf, math.nan],
            "0 (greedy) or from 0.01 to 2",
        ),
        ("top_p", [0, -0.1, 1.01, math.nan], "greater than 0 and at most 1"),
        ("seed", [-1, SEED_MAX + 1, 2**64 - 1, 2**64], "from 0 to 2**63-1"),
        ("presence_penalty", [-2.01, 2.01, math.nan], "from -2 to 2"),
        ("frequency_penalty", [-2.01, 2.01], "from -2 to 2"),
    ],
)
def test_values_past_the_bounds_are_refused_with_the_range(
    field: str, refused: list[Any], says: str
) -> None:
    for value in refused:
        message = _refused(**{field: value})
        assert message.startswith(f"{field}: ") and says in message, message


def test_a_value_that_is_no_number_keeps_pydantics_message() -> None:
    assert "valid number" in _refused(temperature="warm")
    assert "valid integer" in _refused(seed=1.5)


def test_stop_strings_are_1_to_64_characters_at_most_4() -> None:
    assert _completion(stop="x" * 64).stop == ["x" * 64]
    assert _completion(stop=["a", "b", "c", "d"]).stop == ["a", "b", "c", "d"]
    for stop in ("x" * 65, ["ok", "x" * 65], [""], ["a", "b", "c", "d", "e"]):
        assert "up to 4 strings of 1 to 64 characters" in _refused(stop=stop)


def test_model_and_user_are_at_most_128_characters() -> None:
    assert _completion(model="m" * 128, user="u" * 128).user == "u" * 128
    assert "at most 128 characters" in _refused(model="m" * 129)
    assert "at most 128 characters" in _refused(user="u" * 129)
    assert "at least 1 character" in _refused(model="")


def test_a_message_name_is_a_plain_identifier_of_up_to_64() -> None:
    assert ChatMessage(role="user", content="hi", name="Ada_Lovelace-2").name == "Ada_Lovelace-2"
    assert ChatMessage(role="user", content="hi", name="n" * 64).name == "n" * 64
    for name in ("n" * 65, "", "<|assistant|>", "two words", "ünï"):
        with pytest.raises(ValidationError):
            ChatMessage(role="user", content="hi", name=name)
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate(
            {"model": "tiny:1", "messages": [{"role": "user", "content": "x", "name": "a b"}]}
        )
    assert describe(caught.value.errors()).startswith("messages.0.name: String should match")


def test_the_seed_range_is_what_torch_seeds_with() -> None:
    low, high = TORCH_SEED_RANGE
    for seed in (low, -1, 0, SEED_MAX, SEED_MAX + 1, high):
        torch.Generator().manual_seed(seed)
    for seed in (low - 1, high + 1):
        with pytest.raises((ValueError, RuntimeError, OverflowError)):
            torch.Generator().manual_seed(seed)


def test_temperatures_under_the_minimum_overflow_float32_logits() -> None:
    # Why the floor exists: logits of a real model's magnitude (~+-40) divided by a tiny
    # temperature overflow, and sampling gets NaN probabilities.
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 10
    assert not torch.isfinite(torch.softmax(logits / 1e-40, -1)).all()
    assert torch.isfinite(torch.softmax(logits / 0.01, -1)).all()


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 1e-40},
        {"temperature": -1.0},
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_p": math.nan},
        {"seed": 2**64},
        {"seed": -(2**63) - 1},
        {"max_tokens": 0},
        {"presence_penalty": math.nan},
        {"frequency_penalty": math.inf},
    ],
)
def test_sampling_params_refuse_what_decoding_cannot_take(settings: dict[str, Any]) -> None:
    # The engines' own guard, for requests that did not come through the schema.
    with pytest.raises(ValueError):
        SamplingParams.from_request({"max_tokens": 4, **settings})


def test_sampling_params_take_the_edges_of_their_ranges() -> None:
    low, high = TORCH_SEED_RANGE
    for settings in (
        {"temperature": 0.0},
        {"temperature": 0.01, "top_p": 1e-9},
        {"temperature": 100.0},
        {"seed": low},
        {"seed": high},
    ):
        SamplingParams.from_request({"max_tokens": 1, **settings})


class _Peaked(torch.nn.Module):
    """Every step prefers token 5, narrowly (6 is next by 0.01): sampling could pick either."""

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        logits = torch.zeros((input_ids.shape[0], input_ids.shape[1], 8))
        logits[..., 5], logits[..., 6] = 1.0, 0.99
        return SimpleNamespace(logits=logits, past_key_values=None)


def test_a_tiny_top_p_keeps_the_likeliest_token() -> None:
    # The nucleus keeps every token whose mass before it is under top_p: the first always.
    tokenizer = SimpleNamespace(decode=lambda ids, **_: " ".join(map(str, ids)))
    loaded = LoadedModel("m:1", _Peaked(), tokenizer, frozenset({0}), 0)
    for seed in range(5):
        params = SamplingParams(max_tokens=6, temperature=2.0, top_p=1e-9, seed=seed)
        decoder = BatchDecoder(loaded, [[1, 2]], [params])
        while not decoder.done:
            decoder.step()
        assert decoder.rows[0].tokens == [5] * 6
