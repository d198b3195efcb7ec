"""The ``flywheel`` front door: the command map, help on every command, clear config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from cli.main import COMMANDS, app

runner = CliRunner()


def registered() -> set[str]:
    """Every command and subcommand, as space-separated paths."""
    names = set()
    for name, command in get_command(app).commands.items():
        names.add(name)
        names.update(f"{name} {sub}" for sub in getattr(command, "commands", {}))
    return names


def test_command_map_matches_registered_commands() -> None:
    assert registered() == set(COMMANDS)


def test_top_level_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name, description in COMMANDS.items():
        if " " not in name:
            assert name in result.output and description.split()[0] in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    result = runner.invoke(app, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert COMMANDS[name].split(":")[0].split(" (")[0][:30] in " ".join(result.output.split())


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ninput: {uri: /a}\noutput: {uri: /b}\nbogus: 1\n")
    result = runner.invoke(app, ["ingest", "--config", str(path)])
    assert result.exit_code == 2
    assert "unknown key 'bogus'" in result.output


def test_demo_refuses_a_bucket_home() -> None:
    # FLYWHEEL_HOME names a bucket for cluster jobs; the demo's home is a local folder.
    result = runner.invoke(app, ["demo"], env={"FLYWHEEL_HOME": "s3://bucket/flywheel"})
    assert result.exit_code == 2
    assert "local disk" in result.output


def test_models_commands_end_to_end(tmp_path: Path) -> None:
    from core import storage
    from core.registry import ModelRegistry

    reg_uri = str(tmp_path / "registry")
    reg = ModelRegistry(reg_uri, actor="t")
    for tag in "ab":
        src = tmp_path / tag
        src.mkdir()
        (src / "config.json").write_text(tag)
        reg.register("m", src)
    opt = ["--registry", reg_uri]

    def run(*args: str) -> str:
        result = runner.invoke(app, ["models", *args, *opt])
        assert result.exit_code == 0, result.output
        return result.output

    assert "m:1" in run("list") and "m:2" in run("list")
    assert '"version": 2' in run("show", "m")
    assert "None -> 1" in run("promote", "m:1")
    assert "1 -> 2" in run("promote", "m:2")
    assert "2 -> 1" in run("rollback", "m")
    assert "version: m:1" in run("lineage", "m:1")
    verified = run("audit", "--verify")
    head = reg.audit.head()
    assert "intact" in verified and f"head {head['count']} {head['hash']}" in verified
    assert "intact" in run("audit", "--expect-head", head["hash"])
    first = reg.audit.folder.join("00000001.json")
    body = storage.read_json(first)
    body["actor"] = "mallory"
    storage.write_json(first, body)
    tampered = runner.invoke(app, ["models", "audit", "--verify", *opt])
    assert tampered.exit_code == 1 and "TAMPERED" in tampered.output
    missing = runner.invoke(app, ["models", "show", "m:7", *opt])
    assert missing.exit_code == 2 and "not registered" in missing.output
