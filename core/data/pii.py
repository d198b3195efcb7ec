"""PII and secret redaction: fast regex recognizers with validation, pluggable.

Covers e-mail addresses, phone numbers (US formats and "+<country code>" international ones),
IPv4 and IPv6 addresses, payment card numbers (Luhn-checked), US social security numbers, IBANs
(ISO 7064 mod-97 checked), AWS access key ids, bearer tokens and API keys (well-known prefixes
and ``api_key=...``-style assignments, where only the value is redacted). Each match becomes a
typed placeholder such as ``<EMAIL>``.

Not covered: names, postal addresses, dates of birth and anything else that needs a language
model; plug in ``core.data.pii_presidio.PresidioRecognizer`` with a local spaCy pipeline for
those. Phone numbers without a "+" that are not in a US layout (e.g. UK "020 7946 0958") are
not detected either.

Overlapping spans are resolved by kind, in ``KIND_PRIORITY`` order, then by the longer span:

    AWS_ACCESS_KEY > API_KEY > BEARER_TOKEN > EMAIL > IBAN > CREDIT_CARD > US_SSN > IPV6 > IPV4
    > PHONE > plug-in kinds (PERSON, LOCATION, ...)

Secrets have the most specific formats, so they go first; checksum- or layout-validated numbers
(IBAN, card, SSN) beat phone numbers, the loosest pattern, so a card is never redacted as a
phone; IPv6 beats IPv4 so an IPv4-mapped tail stays inside its IPv6 address.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from core.data.pii_rules import PII_KINDS, PiiSpan, Recognizer, default_recognizers

__all__ = [
    "KIND_PRIORITY",
    "PII_KINDS",
    "PiiRedactor",
    "PiiSpan",
    "Recognizer",
    "build_recognizers",
    "default_recognizers",
]

KIND_PRIORITY: tuple[str, ...] = (
    "AWS_ACCESS_KEY",
    "API_KEY",
    "BEARER_TOKEN",
    "EMAIL",
    "IBAN",
    "CREDIT_CARD",
    "US_SSN",
    "IPV6",
    "IPV4",
    "PHONE",
)


def _rank(span: PiiSpan) -> tuple[int, int, int]:
    kind_rank = KIND_PRIORITY.index(span.kind) if span.kind in KIND_PRIORITY else len(KIND_PRIORITY)
    return kind_rank, span.start - span.end, span.start


def _resolve(spans: list[PiiSpan]) -> list[PiiSpan]:
    """Keep non-overlapping spans, best first by ``_rank``; returned sorted by start."""
    kept: list[PiiSpan] = []
    starts: list[int] = []
    for span in sorted(set(spans), key=_rank):
        i = bisect.bisect_left(starts, span.start)
        if i > 0 and kept[i - 1].end > span.start:
            continue
        if i < len(kept) and kept[i].start < span.end:
            continue
        kept.insert(i, span)
        starts.insert(i, span.start)
    return kept


class PiiRedactor:
    """Finds PII with a set of recognizers and replaces it with ``<KIND>`` placeholders."""

    def __init__(self, recognizers: Sequence[Recognizer] | None = None) -> None:
        chosen = default_recognizers() if recognizers is None else recognizers
        self._recognizers: tuple[Recognizer, ...] = tuple(chosen)

    def find(self, text: str) -> list[PiiSpan]:
        """Resolved spans: non-overlapping, sorted by start."""
        spans: list[PiiSpan] = []
        for recognizer in self._recognizers:
            spans.extend(recognizer.find(text))
        for span in spans:
            if not 0 <= span.start < span.end <= len(text):
                raise ValueError(f"recognizer returned {span} outside a text of {len(text)}")
        return _resolve(spans) if spans else []

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """``text`` with each span replaced by ``<KIND>``, and counts of the kinds found."""
        spans = self.find(text)
        if not spans:
            return text, {}
        parts: list[str] = []
        counts: dict[str, int] = {}
        position = 0
        for span in spans:
            parts += (text[position : span.start], f"<{span.kind}>")
            counts[span.kind] = counts.get(span.kind, 0) + 1
            position = span.end
        parts.append(text[position:])
        return "".join(parts), counts

    def redact_batch(self, texts: Sequence[str]) -> tuple[list[str], dict[str, int]]:
        """``redact`` over ``texts``; counts are summed over the batch."""
        redacted: list[str] = []
        totals: dict[str, int] = {}
        for text in texts:
            clean, counts = self.redact(text)
            redacted.append(clean)
            for kind, count in counts.items():
                totals[kind] = totals.get(kind, 0) + count
        return redacted, totals


def build_recognizers(
    kinds: Sequence[str] | None, presidio_model_path: str | None
) -> list[Recognizer]:
    """``default_recognizers(kinds)``, plus a ``PresidioRecognizer`` when a model path is given."""
    recognizers = default_recognizers(kinds)
    if presidio_model_path is not None:
        # Imported here: the plug-in module builds on this one's span type.
        from core.data.pii_presidio import PresidioRecognizer

        recognizers.append(PresidioRecognizer(presidio_model_path))
    return recognizers
