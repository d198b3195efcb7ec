"""The demo's terminal summaries stay short without hiding a miss."""

from __future__ import annotations

from demo.run import Accounting, compact_pii


def test_pii_rows_fold_into_one_when_every_kind_was_found() -> None:
    rows = [Accounting("exact duplicate copies", 3, 3), *_pii(found_email=4)]
    assert compact_pii(rows) == [rows[0], Accounting("PII: 2 kinds", 9, 9)]


def test_a_missed_pii_kind_keeps_every_row() -> None:
    rows = [Accounting("exact duplicate copies", 3, 3), *_pii(found_email=3)]
    assert compact_pii(rows) == rows


def _pii(found_email: int) -> list[Accounting]:
    return [Accounting("PII: EMAIL", 4, found_email), Accounting("PII: IBAN", 5, 5)]
