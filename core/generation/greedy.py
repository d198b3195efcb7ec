"""Greedy answers to chat questions: how evaluation and the governance checks ask a model.

One rule for every score that reads an answer (QA accuracy, held-back corrections, the
hallucination and bias probes): the question goes through the model's own chat template,
then up to ``max_new`` tokens are decoded at temperature 0, so a score is reproducible.
"""

from __future__ import annotations

from core.generation.decoder import BatchDecoder
from core.generation.loading import LoadedModel
from core.generation.sampling import SamplingParams


def greedy_answers(loaded: LoadedModel, prompts: list[list[int]], max_new: int) -> list[str]:
    """Greedy completions of token-id prompts, 16 at a time."""
    answers: list[str] = []
    for i in range(0, len(prompts), 16):
        ids = prompts[i : i + 16]
        decoder = BatchDecoder(
            loaded, ids, [SamplingParams(max_tokens=max_new, temperature=0)] * len(ids)
        )
        texts = [""] * len(ids)
        while not decoder.done:
            for j, out in enumerate(decoder.step()):
                texts[j] += out.text
        answers.extend(texts)
    return answers


def chat_prompt_ids(loaded: LoadedModel, questions: list[str]) -> list[list[int]]:
    """Each question as one user turn in the model's chat template, ready to answer."""
    tok = loaded.tokenizer
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in questions
    ]
    return [tok(p, add_special_tokens=False).input_ids for p in prompts]


def ask(loaded: LoadedModel, questions: list[str], max_new: int) -> list[str]:
    """Greedy answers to plain-text questions."""
    return greedy_answers(loaded, chat_prompt_ids(loaded, questions), max_new) if questions else []
