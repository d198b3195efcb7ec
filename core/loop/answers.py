"""Whether a generated answer states an expected one: the one rule the demo and the gate share.

Answers are compared as normalised token sequences, so "36-hour", "36 HOURS" and "thirty six"
style variants agree where cheap to support, and the unit may be abbreviated ("36h", "10 s").
The expected answer must appear as whole tokens: "4" is not found in "14", which a plain
substring test would accept.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache

_NUMBER_WORDS = {
    word: str(i)
    for i, word in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen", "twenty")
    )
}  # fmt: skip
_UNIT_ALIASES = {
    "hour": "hour|hr|hrs|h",
    "second": "second|sec|s",
    "year": "year|yr|yrs",
    "meter": "meter|metre|m",
    "centimeter": "centimeter|centimetre|cm",
    "liter": "liter|litre|l",
    "lumen": "lumen|lm",
}


def normalize_answer(text: str) -> str:
    """Case-folded alphanumeric tokens: units singular, letters split from digits."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # 1,299 -> 1299
    text = re.sub(r"[^a-z0-9.]+", " ", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # keep dots only inside numbers
    text = re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])", " ", text)  # E14 -> e 14
    return " ".join(_normalize_token(token) for token in text.split())


def _normalize_token(token: str) -> str:
    if token in _NUMBER_WORDS:
        return _NUMBER_WORDS[token]
    if re.fullmatch(r"\d+\.0+", token):  # $149.00 -> 149
        return token.split(".")[0]
    if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        return token[:-1]
    return token


@cache
def _answer_pattern(answer: str) -> re.Pattern[str] | None:
    tokens = normalize_answer(answer).split()
    if not tokens:
        return None
    parts = [re.escape(token) for token in tokens]
    if tokens[-1] in _UNIT_ALIASES:
        parts[-1] = f"(?:{_UNIT_ALIASES[tokens[-1]]})"
    return re.compile(r"(?<!\S)" + " ".join(parts) + r"(?!\S)")


def answer_matches(expected: str, completion: str) -> bool:
    """Whether ``completion`` contains ``expected`` (tolerant to case, punctuation, units).
    An expected answer with no letters or digits matches nothing."""
    pattern = _answer_pattern(expected)
    return pattern is not None and pattern.search(normalize_answer(completion)) is not None


_UNITS = frozenset([*_UNIT_ALIASES, "year", "day", "minute", "dollar", "percent", "watt"])
# Words too common to say what an answer adds to its question.
_COMMON = frozenset(
    ("a", "an", "the", "is", "are", "was", "be", "of", "for", "to", "it", "its", "and", "or",
     "in", "on", "at", "by", "with", "you", "your", "i", "my", "this", "that", "has", "have",
     "do", "doe", "does", "can", "which", "what", "how", "much", "many", "long", "who",
     "where", "when")
)  # fmt: skip


def expected_answer(prompt: str, answer: str) -> str:
    """What ``answer`` adds to ``prompt``: a run of tokens the question does not already
    hold, the first one with a number if any (facts are mostly numbers and codes), else
    the last (answers tend to end on their point). So "The Heron H2 costs $149." answering
    "How much does the Heron H2 cost?" expects "149". A number before a unit stays with it
    ("2 years" when the product is an H2). The whole answer when it adds nothing."""
    seen = set(normalize_answer(prompt).split()) | _COMMON
    tokens = normalize_answer(answer).split()
    new = [t not in seen for t in tokens]
    for i in range(len(tokens) - 1):
        new[i] = new[i] or (_is_number(tokens[i]) and tokens[i + 1] in _UNITS and new[i + 1])
    runs: list[list[str]] = [[]]
    for token, fresh in zip(tokens, new, strict=True):
        if fresh:
            runs[-1].append(token)
        elif runs[-1]:
            runs.append([])
    runs = [r for r in runs if r]
    if not runs:
        return answer
    numbered = [r for r in runs if any(_is_number(t) for t in r)]
    return " ".join(numbered[0] if numbered else runs[-1])


def _is_number(token: str) -> bool:
    return token.replace(".", "").isdigit()
