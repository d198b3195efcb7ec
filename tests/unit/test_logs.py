"""The one logging set-up: Flywheel's lines on the terminal, everything in the home's file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.logs import LOG_FILE, adopt_logger, library_output_to_log, logs_dir, setup_logging
from jobs.runtime import Progress


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    setup_logging(None)  # drop the file handler the test installed
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_terminal_gets_our_lines_and_the_file_gets_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    path = setup_logging(tmp_path, bars=False)
    assert path == logs_dir(tmp_path) / LOG_FILE
    logging.getLogger("jobs.train").info("step 3/10")
    logging.getLogger("otherlib.core").info("Deployed app")
    logging.getLogger("otherlib.core").error("replica died")
    Progress("demo").say("step 1")
    err = capsys.readouterr().err
    assert "step 3/10" in err and "replica died" in err and "] step 1" in err
    assert "Deployed app" not in err
    text = path.read_text()
    for line in ("step 3/10", "Deployed app", "replica died", "] step 1"):
        assert line in text


def test_setting_up_again_does_not_print_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    setup_logging(None)
    setup_logging(tmp_path)
    logging.getLogger("demo.run").info("once")
    assert capsys.readouterr().err.count("once") == 1


def test_a_library_terminal_handler_is_adopted_and_its_file_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    setup_logging(None)
    lib = logging.getLogger("somelib")
    own_file = logging.FileHandler(tmp_path / "somelib.log")
    lib.addHandler(logging.StreamHandler())
    lib.addHandler(own_file)
    lib.propagate = False
    adopt_logger("somelib")
    lib.warning("chatter")
    assert "chatter" not in capsys.readouterr().err
    assert lib.handlers == [own_file] and lib.propagate
    lib.removeHandler(own_file)
    own_file.close()


def test_a_quiet_progress_writes_to_its_stream_and_draws_no_bar(tmp_path: Path) -> None:
    out = tmp_path / "quiet.txt"
    with out.open("w") as stream:
        progress = Progress("bench", stream=stream)
        progress.say("hello")
        with progress.bar(total=3, desc="work") as bar:
            bar.update(3)
        assert bar.disable
    assert out.read_text().endswith("] hello\n")


def test_library_output_goes_to_the_file_a_bar_as_its_last_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    import sys

    path = setup_logging(tmp_path)
    with library_output_to_log("somelib"):
        print("a banner")
        sys.stderr.write("bar 1/3\rbar 2/3\rbar 3/3\n")
        logging.getLogger("demo.run").info("ours")
    err = capsys.readouterr()
    assert "banner" not in err.out and "bar" not in err.err and "ours" in err.err
    text = path.read_text()
    assert "a banner" in text and "bar 3/3" in text and "bar 1/3" not in text
