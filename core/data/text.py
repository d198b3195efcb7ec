"""Text cleaning and quality filters: pure functions over strings.

``clean_text`` normalises Unicode, drops control and zero-width characters and collapses
whitespace while keeping paragraph structure (single newlines kept, 3+ collapsed to 2).
``quality_reason`` returns why a cleaned document should be removed, or None to keep it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from schemas.ingest import CleanConfig

# C0/C1 controls except tab and newline, plus zero-width and bidi marks that only hide text.
_DELETE = {
    c: None for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]
}
_DELETE.update({c: None for c in (0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2060, 0xFEFF)})
_DELETE.update({0x2028: "\n", 0x2029: "\n\n", 0x0D: "\n"})
_SPACES = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_ALL_SPACE = re.compile(r"\s+")


def clean_text(text: str, normalization: str = "NFKC") -> str:
    """Normalise Unicode, remove control characters, collapse whitespace."""
    if normalization != "none":
        text = unicodedata.normalize(normalization, text)
    text = text.replace("\r\n", "\n").translate(_DELETE)
    text = _SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _MANY_NEWLINES.sub("\n\n", text).strip()


# Cyrillic and Greek letters drawn like Latin ones (Unicode confusables, the common subset).
# NFKC leaves them alone, so "іgnоrе" (Cyrillic і, о, е) survives it.
_CONFUSABLES = str.maketrans(
    {
        **dict(zip("аеіјорсухѕһԁԛԝӏ", "aeijopcyxshdqwl", strict=True)),
        **dict(zip("АВЕКМНІЈОРСТУХЅԚԜҮҺ", "ABEKMHIJOPCTYXSQWYH", strict=True)),
        **dict(zip("αικνορτυχϲ", "aikvoptuxc", strict=True)),
        **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEZHIKMNOPTYX", strict=True)),
    }
)


def fold_confusables(text: str) -> str:
    """Replace Cyrillic and Greek homoglyphs of Latin letters by those letters (case kept).

    For checks, never for storage: it mangles real Cyrillic and Greek text.
    """
    return text.translate(_CONFUSABLES)


def alpha_ratio(text: str) -> float:
    """Share of letters among the non-whitespace characters (1.0 for an empty text)."""
    visible = len(text) - sum(1 for c in text if c.isspace())
    if visible == 0:
        return 1.0
    return sum(1 for c in text if c.isalpha()) / visible


def repeated_line_ratio(text: str) -> float:
    """Share of non-empty lines that repeat an earlier line of the same document."""
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < 3:
        return 0.0
    return (len(lines) - len(set(lines))) / len(lines)


def quality_reason(text: str, cfg: CleanConfig) -> str | None:
    """Why a cleaned document is removed (``too_short``, ``too_long``, ``low_alpha``,
    ``repeated_lines``), or None to keep it. Cheap checks run first."""
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    if alpha_ratio(text) < cfg.min_alpha_ratio:
        return "low_alpha"
    if repeated_line_ratio(text) > cfg.max_repeated_line_ratio:
        return "repeated_lines"
    return None


def exact_key(text: str) -> bytes:
    """16-byte key equal for texts that differ only in letter case and whitespace."""
    folded = _ALL_SPACE.sub(" ", text.casefold()).strip()
    return hashlib.blake2b(folded.encode(), digest_size=16).digest()
