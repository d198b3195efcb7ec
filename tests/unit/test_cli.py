"""The ``flywheel`` front door: the command map, help on every command, clear config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from cli.main import COMMANDS, app

runner = CliRunner()


def registered() -> set[str]:
    return set(get_command(app).commands)


def test_command_map_matches_registered_commands() -> None:
    assert registered() == set(COMMANDS)


def test_top_level_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name, description in COMMANDS.items():
        assert name in result.output
        assert description.split()[0] in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    result = runner.invoke(app, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ninput: {uri: /a}\noutput: {uri: /b}\nbogus: 1\n")
    result = runner.invoke(app, ["ingest", "--config", str(path)])
    assert result.exit_code == 2
    assert "unknown key 'bogus'" in result.output
