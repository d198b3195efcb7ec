"""The demo's terminal summaries stay short without hiding a miss."""

from __future__ import annotations

from pathlib import Path

from demo.loop_act import Accuracy, LoopActResult
from demo.run import Accounting, archive_previous_loop, compact_pii, loop_lines


def test_pii_rows_fold_into_one_when_every_kind_was_found() -> None:
    rows = [Accounting("exact duplicate copies", 3, 3), *_pii(found_email=4)]
    assert compact_pii(rows) == [rows[0], Accounting("PII: 2 kinds", 9, 9)]


def test_a_missed_pii_kind_keeps_every_row() -> None:
    rows = [Accounting("exact duplicate copies", 3, 3), *_pii(found_email=3)]
    assert compact_pii(rows) == rows


def _pii(found_email: int) -> list[Accounting]:
    return [Accounting("PII: EMAIL", 4, found_email), Accounting("PII: IBAN", 5, 5)]


def test_loop_lines_show_the_cycle_time_and_both_heldout_sets() -> None:
    loop = LoopActResult(
        "promoted demo:2: canary rated as well as production",
        corrected={"demo:1": Accuracy(5, 47), "demo:2": Accuracy(30, 47)},
        uncorrected={"demo:1": Accuracy(20, 68), "demo:2": Accuracy(22, 68)},
        cycle_s=316.0,
        phases_s={"publish": 21.0, "fine-tune": 180.0, "evaluate": 61.0, "canary": 52.0},
    )
    assert loop_lines(loop) == [
        "  loop      promoted demo:2: canary rated as well as production",
        "  cycle     316s from trigger to outcome: publish 21s, fine-tune 180s, evaluate 61s, "
        "canary 52s",
        "  held-out  demo:1       corrected facts 5/47 = 11%    uncorrected facts 20/68 = 29%",
        "  held-out  demo:2       corrected facts 30/47 = 64%   uncorrected facts 22/68 = 32%",
    ]


def test_loop_lines_without_a_finished_cycle() -> None:
    assert loop_lines(LoopActResult("no cycle finished in time")) == [
        "  loop      no cycle finished in time"
    ]


def test_a_rerun_moves_the_previous_loop_aside(tmp_path: Path) -> None:
    # A previous run's unpublished canary ratings would trigger a cycle of their own.
    assert archive_previous_loop(tmp_path) is None
    for name in ("events", "loop", "registry"):
        (tmp_path / "store" / name).mkdir(parents=True)
        (tmp_path / "store" / name / "x").write_text(name)
    folder = archive_previous_loop(tmp_path)
    assert folder is not None and (folder / "loop" / "x").read_text() == "loop"
    assert (folder / "events" / "x").exists()
    assert not (tmp_path / "store" / "loop").exists() and (tmp_path / "store" / "registry").exists()
