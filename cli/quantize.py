"""``flywheel models quantize NAME:V --method M``: register a quantized version of a version
(``core.generation.quantize``), and with ``--evaluate`` score it against its source
(``jobs.evaluate`` with the source as ``baseline``; the report goes to the new version)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cli.models import DEFAULT_REGISTRY, RegistryOpt, open_registry
from core.config import ConfigError
from core.registry import ModelRegistry, RegistryError
from schemas.registry import ModelVersion

HELP = "Register a quantized version: NAME:VERSION --method int8-dynamic|bf16."


class Method(StrEnum):
    int8_dynamic = "int8-dynamic"
    bf16 = "bf16"


MethodOpt = Annotated[
    Method,
    typer.Option(
        "--method",
        help="int8-dynamic: int8 Linear weights, int8 matmuls on CPU (hf engine only); "
        "bf16: bfloat16 weights (both engines, CPU and GPU).",
    ),
]
EvaluateOpt = Annotated[
    Path | None,
    typer.Option(
        "--evaluate",
        exists=True,
        help="An evaluation recipe (jobs.evaluate): score the new version against its source "
        "on its held-out snapshot; candidate, baseline and registry are set here.",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a setting of the evaluation recipe (repeatable)."),
]


def quantize(
    ref: str,
    method: MethodOpt,
    evaluate: EvaluateOpt = None,
    set_: SetOpt = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    from core.generation.quantize import quantize_version, version_bytes

    reg = open_registry(registry)
    try:
        version = quantize_version(reg, ref, method.value)
    except RegistryError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    q = version.quantization
    assert q is not None  # quantize_version always records how
    size = version_bytes(version)
    typer.echo(
        f"registered {version.ref}: {version.layout}; {size:,} bytes on disk, "
        f"source {q.source_bytes:,} ({size / max(1, q.source_bytes):.2f}x)"
    )
    if evaluate:
        delta = _evaluate(reg, version, evaluate, set_ or [])
        typer.echo(json.dumps({"against": q.source, **delta}, indent=2))


def _evaluate(
    reg: ModelRegistry, version: ModelVersion, recipe: Path, overrides: list[str]
) -> dict:
    """Run the evaluation here (no cluster): a model a CLI could quantize, it can score."""
    from core.config import load_config
    from jobs.evaluate import evaluate_and_record
    from schemas.evaluate import EvalConfig

    assert version.quantization is not None
    ours = [
        f"candidate={version.ref}",
        f"baseline={version.quantization.source}",
        "production=null",  # a recipe for the loop's gate: here, differences only
        f"registry_uri={reg.root.uri}",
    ]
    try:
        cfg = load_config(EvalConfig, recipe, [*overrides, *ours])
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    return evaluate_and_record(cfg)["delta"]
