"""Loading YAML recipes into strict pydantic models, with overrides.

Precedence, lowest to highest: the YAML file, environment variables
``FLYWHEEL__SECTION__KEY=value`` (double underscore between levels), then ``--set
section.key=value`` from the command line. Override values are parsed as YAML scalars, so
``--set pack.block_size=256`` gives an int. Strings in the file may reference environment
variables as ``${NAME}`` or ``${NAME:-default}``.

Errors name the offending key and say what to do: an unknown key lists the valid ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ENV_PREFIX = "FLYWHEEL__"
M = TypeVar("M", bound=BaseModel)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A recipe that does not validate; the message lists every problem by key."""


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> M:
    """Read ``path`` (YAML), apply env and ``key=value`` overrides, validate as ``model``."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(path)
    data = expand_vars(data, environ)
    for key, value in env_overrides(model, environ).items():
        set_path(data, key, value)
    for item in overrides:
        key, value = parse_override(item)
        set_path(data, key, value)
    return validate(model, data, source=str(path) if path else "<overrides>")


def _read_yaml(path: Path | str) -> dict[str, Any]:
    text = _read_text(str(path))
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def _read_text(path: str) -> str:
    """A recipe from a local path or an object-storage URI (a job reading its config)."""
    if "://" in path and not path.startswith("file://"):
        from core import storage

        try:
            return storage.read_bytes(storage.resolve(path)).decode()
        except storage.StorageError as e:
            raise ConfigError(f"config file {path} not found") from e
    local = Path(path.removeprefix("file://"))
    if not local.is_file():
        raise ConfigError(f"config file {path} not found")
    return local.read_text()


def validate(model: type[M], data: Mapping[str, Any], source: str = "<config>") -> M:
    """Validate ``data`` as ``model``; errors become one readable ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [_describe(model, err) for err in e.errors()]
        raise ConfigError(f"invalid config {source}:\n  " + "\n  ".join(lines)) from None


def _describe(model: type[BaseModel], err: Mapping[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    if err["type"] == "extra_forbidden":
        valid = _field_names(model, err["loc"][:-1])
        hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
        return f"unknown key '{key}'{hint}"
    return f"{key}: {err['msg']}"


def _field_names(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = fields[part].annotation
    return sorted(getattr(current, "model_fields", {}))


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is parsed as a YAML scalar."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like section.key=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def env_overrides(model: type[BaseModel], environ: Mapping[str, str]) -> dict[str, Any]:
    """``FLYWHEEL__PACK__BLOCK_SIZE=256`` -> ``{"pack.block_size": 256}``, for this model only."""
    top = set(model.model_fields)
    found = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = ".".join(name[len(ENV_PREFIX) :].lower().split("__"))
        if key.split(".")[0] in top:
            found[key] = yaml.safe_load(raw) if raw.strip() else ""
    return found


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def expand_vars(value: Any, environ: Mapping[str, str]) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a nested structure."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: _lookup(m, environ), value)
    if isinstance(value, dict):
        return {k: expand_vars(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_vars(v, environ) for v in value]
    return value


def _lookup(match: re.Match[str], environ: Mapping[str, str]) -> str:
    name, default = match.group(1), match.group(2)
    if name in environ and environ[name] != "":
        return environ[name]
    if default is not None:
        return default
    raise ConfigError(f"${{{name}}} is used in the config but {name} is not set")


def config_hash(model: BaseModel, exclude: set[str] | None = None) -> str:
    """A stable hash of a config's content (sorted JSON), for ids and lineage."""
    payload = model.model_dump(mode="json", exclude=exclude)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
