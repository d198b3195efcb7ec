"""An optional presidio-analyzer plug-in for :mod:`core.data.pii`: names, places and other
entities that need a language model, over a local spaCy pipeline (presidio's default engine
downloads a model at start-up, which fails offline)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.data.pii_rules import PiiSpan

_PRESIDIO_TO_KIND = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "US_SSN": "US_SSN",
    "IBAN_CODE": "IBAN",
}


def presidio_kind(entity_type: str, value: str) -> str:
    """Our kind for a presidio entity; IP_ADDRESS splits by content, unknown names pass through."""
    if entity_type == "IP_ADDRESS":
        return "IPV6" if ":" in value else "IPV4"
    return _PRESIDIO_TO_KIND.get(entity_type, entity_type)


def _import_presidio() -> tuple[Any, Any]:
    try:
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider
    except ImportError as exc:
        raise ImportError(
            "PresidioRecognizer needs presidio: `pip install presidio-analyzer`. It also needs a "
            "local spaCy pipeline directory as model_path; presidio's default engine downloads "
            "a model at start-up, which fails offline."
        ) from exc
    return AnalyzerEngine, NlpEngineProvider


class PresidioRecognizer:
    """presidio-analyzer over a local spaCy pipeline, for names, places and other NER entities.

    ``entities`` are presidio entity names ("PERSON", "LOCATION", ...; None: all it supports).
    Results scoring below ``score_threshold`` are dropped: several presidio pattern recognizers
    report weak guesses (scores of 0.05-0.4) that would redact ordinary numbers.
    """

    name = "presidio"

    def __init__(
        self,
        model_path: str,
        entities: Sequence[str] | None = None,
        *,
        score_threshold: float = 0.5,
    ) -> None:
        analyzer_engine, nlp_engine_provider = _import_presidio()
        if not Path(model_path).is_dir():
            # Checked here because presidio tries to download any model it cannot find.
            raise FileNotFoundError(
                f"spaCy pipeline directory {model_path!r} not found; pass the path of a local "
                "pipeline (e.g. a copy of the en_core_web_lg package directory)"
            )
        config = {
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": model_path}],
        }
        nlp_engine = nlp_engine_provider(nlp_configuration=config).create_engine()
        self._analyzer = analyzer_engine(nlp_engine=nlp_engine, supported_languages=["en"])
        self._entities = list(entities) if entities is not None else None
        self._score_threshold = score_threshold

    def find(self, text: str) -> list[PiiSpan]:
        results = self._analyzer.analyze(
            text=text,
            language="en",
            entities=self._entities,
            score_threshold=self._score_threshold,
        )
        return [
            PiiSpan(r.start, r.end, presidio_kind(r.entity_type, text[r.start : r.end]))
            for r in results
        ]
