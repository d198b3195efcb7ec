"""Config loading: strict schemas, readable errors, env and command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, config_hash, expand_vars, load_config
from schemas.ingest import IngestConfig

REPO = Path(__file__).resolve().parents[2]
MINIMAL = "name: t\ninput: {uri: /data/raw}\noutput: {uri: /data/out}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(IngestConfig, write(tmp_path, MINIMAL), environ={})
    assert cfg.pack.block_size == 512 and cfg.dedup.threshold == 0.65


def test_unknown_key_is_named_with_valid_keys(tmp_path: Path) -> None:
    text = MINIMAL + "pack: {block_sise: 3}\n"
    with pytest.raises(ConfigError) as e:
        load_config(IngestConfig, write(tmp_path, text), environ={})
    assert "unknown key 'pack.block_sise'" in str(e.value)
    assert "block_size" in str(e.value)


def test_wrong_type_and_missing_field_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pack\.block_size"):
        load_config(
            IngestConfig, write(tmp_path, MINIMAL + "pack: {block_size: big}\n"), environ={}
        )
    with pytest.raises(ConfigError, match=r"output: Field required"):
        load_config(IngestConfig, write(tmp_path, "name: t\ninput: {uri: x}\n"), environ={})


def test_overrides_env_then_cli(tmp_path: Path) -> None:
    env = {"FLYWHEEL__PACK__BLOCK_SIZE": "64", "FLYWHEEL__TRAIN__X": "ignored: not ours"}
    path = write(tmp_path, MINIMAL)
    assert load_config(IngestConfig, path, environ=env).pack.block_size == 64
    cfg = load_config(IngestConfig, path, ["pack.block_size=32", "dedup.near=false"], environ=env)
    assert cfg.pack.block_size == 32 and cfg.dedup.near is False
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(IngestConfig, path, ["nonsense"], environ={})


def test_env_vars_in_strings() -> None:
    env = {"HOME_X": "/h"}
    assert expand_vars({"a": ["${HOME_X}/x", "${NOPE:-d}/y"]}, env) == {"a": ["/h/x", "d/y"]}
    with pytest.raises(ConfigError, match="NOPE"):
        expand_vars("${NOPE}", env)


def test_validators_explain(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tokenizer\.uri is required"):
        load_config(IngestConfig, write(tmp_path, MINIMAL + "tokenizer: {kind: pretrained}\n"))


def test_config_hash_stable_and_sensitive(tmp_path: Path) -> None:
    a = load_config(IngestConfig, write(tmp_path, MINIMAL), environ={})
    b = load_config(IngestConfig, write(tmp_path, MINIMAL), ["pack.block_size=8"], environ={})
    assert config_hash(a) == config_hash(a.model_copy()) != config_hash(b)


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("ingest-*.yaml")))
def test_shipped_ingest_configs_load(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# flywheel ingest --config jobs/configs/")
    assert "ray job submit" in path.read_text().splitlines()[1]
    load_config(IngestConfig, path, environ={"FLYWHEEL_HOME": "/tmp/fw"})


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("train-*.yaml")))
def test_shipped_train_configs_load(path: Path) -> None:
    from schemas.train import TrainConfig

    lines = path.read_text().splitlines()
    assert lines[0].startswith("# flywheel train --config jobs/configs/")
    assert "ray job submit" in lines[1] and "python -m jobs.train" in lines[1]
    cfg = load_config(TrainConfig, path, environ={"FLYWHEEL_HOME": "/tmp/fw"})
    assert cfg.scaling.num_workers >= 1


def test_serve_config_is_valid_for_ray_and_for_us() -> None:
    from cli.serving import load_serve_config

    raw = load_serve_config(REPO / "infra" / "serve.yaml")
    assert raw["http_options"]["host"] == "127.0.0.1"
    assert raw["applications"][0]["import_path"] == "serve_apps.app:build_app"


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("loop-*.yaml")))
def test_shipped_loop_configs_load(path: Path) -> None:
    from schemas.loop import LoopConfig
    from schemas.train import TrainConfig

    assert path.read_text().startswith("# flywheel loop run --config jobs/configs/")
    cfg = load_config(LoopConfig, path, environ={"FLYWHEEL_HOME": "/tmp/fw"})
    recipe = REPO / cfg.finetune.recipe
    load_config(TrainConfig, recipe, cfg.finetune.overrides, environ={"FLYWHEEL_HOME": "/tmp/fw"})
