"""Cleaning and quality filters."""

from __future__ import annotations

from core.data.text import alpha_ratio, clean_text, exact_key, quality_reason, repeated_line_ratio
from schemas.ingest import CleanConfig


def test_normalises_unicode_and_removes_controls() -> None:
    raw = "Ｔｈｅ ﬁrst\u200b line\x07 \t  with   spaces\r\nsecond\u00a0line\n\n\n\nthird"
    assert clean_text(raw) == "The first line with spaces\nsecond line\n\nthird"


def test_nfc_keeps_compatibility_forms() -> None:
    assert clean_text("ﬁ", "NFC") == "ﬁ" and clean_text("ﬁ", "NFKC") == "fi"


def test_clean_is_idempotent() -> None:
    once = clean_text(" a \n\n\n b\x00c ")
    assert clean_text(once) == once == "a\n\nbc"


def test_ratios() -> None:
    assert alpha_ratio("abc 123") == 0.5
    assert alpha_ratio("   ") == 1.0
    assert repeated_line_ratio("a\nb\na\na") == 0.5
    assert repeated_line_ratio("a\na") == 0.0  # too few lines to judge


def test_quality_reasons() -> None:
    cfg = CleanConfig(min_chars=10, max_chars=200)
    good = "A perfectly normal sentence about thermostats."
    assert quality_reason(good, cfg) is None
    assert quality_reason("ok thanks", cfg) == "too_short"
    assert quality_reason("x" * 201, cfg) == "too_long"
    assert quality_reason("1234 5678 9012 3456 !!!! ####", cfg) == "low_alpha"
    assert quality_reason("\n".join(["buy now"] * 6 + ["other line", "third"]), cfg) == (
        "repeated_lines"
    )


def test_exact_key_folds_case_and_space() -> None:
    assert exact_key("Hello   World\n") == exact_key("hello world")
    assert exact_key("hello world") != exact_key("hello worlds")
