"""``flywheel models ...``: the registry from the command line."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from core.registry import AliasConflict, ModelRegistry, RegistryError, parse_ref
from core.registry.audit import AuditLog

DEFAULT_REGISTRY = "${FLYWHEEL_HOME:-.flywheel}/store/registry"

app = typer.Typer(help="Model registry: versions, aliases, lineage, audit.", no_args_is_help=True)

RegistryOpt = Annotated[
    str,
    typer.Option(
        "--registry",
        envvar="FLYWHEEL_REGISTRY",
        help="Registry root (path or s3://); default $FLYWHEEL_HOME/store/registry.",
    ),
]


def open_registry(uri: str) -> ModelRegistry:
    from core.config import expand_vars

    try:
        return ModelRegistry(expand_vars(uri, os.environ))
    except (RegistryError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _fail(e: Exception) -> typer.Exit:
    typer.echo(f"error: {e}", err=True)
    return typer.Exit(2)


@app.command("list", help="Models, their versions and aliases.")
def list_models(registry: RegistryOpt = DEFAULT_REGISTRY) -> None:
    reg = open_registry(registry)
    for name in reg.models():
        aliases = reg.aliases(name)
        typer.echo(f"{name}  aliases: {json.dumps(aliases)}")
        for v in reg.versions(name):
            tags = ",".join(a for a, n in aliases.items() if n == v.version)
            base = f" on {v.base}" if v.base else ""
            loss = v.metrics.get("loss")
            extra = f" loss={loss:.4f}" if isinstance(loss, float) else ""
            typer.echo(f"  {v.ref:<24} {v.layout}{base}  {v.created_at}{extra}  {tags}")


@app.command(help="One version as JSON: NAME[:VERSION|@ALIAS] (latest when bare).")
def show(ref: str, registry: RegistryOpt = DEFAULT_REGISTRY) -> None:
    reg = open_registry(registry)
    try:
        version = reg.get(ref)
    except RegistryError as e:
        raise _fail(e) from None
    body = version.model_dump(mode="json")
    body["metrics"].pop("curve", None)
    body["evals"] = reg.eval_reports(version.ref)
    typer.echo(json.dumps(body, indent=2))


@app.command(help="Point an alias (default production) at a version: NAME:VERSION.")
def promote(
    ref: str,
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "manual promote",
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    reg = open_registry(registry)
    name, version, _ = parse_ref(ref)
    try:
        version = version or reg.get(ref).version
        record = reg.set_alias(name, alias, version, reason=reason)
    except (RegistryError, AliasConflict) as e:
        raise _fail(e) from None
    typer.echo(f"{name}@{alias}: {record.previous} -> {record.version}")


@app.command(help="Move an alias back to where it pointed before its last move: NAME.")
def rollback(
    name: str,
    alias: Annotated[str, typer.Option(help="Alias to move back.")] = "production",
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "manual rollback",
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    reg = open_registry(registry)
    try:
        record = reg.rollback(name, alias, reason=reason)
    except RegistryError as e:
        raise _fail(e) from None
    typer.echo(f"{name}@{alias}: {record.previous} -> {record.version}")


NoteOpt = Annotated[str, typer.Option("--note", help="Why, for the audit log and the loop.")]
ByOpt = Annotated[
    str | None, typer.Option("--by", help="Who decides, for the audit log; default user@host.")
]


@app.command(help="Approve the loop's candidate awaiting approval: NAME:VERSION.")
def approve(
    ref: str, note: NoteOpt, by: ByOpt = None, registry: RegistryOpt = DEFAULT_REGISTRY
) -> None:
    _decide(ref, True, note, by, registry)


@app.command(help="Reject the loop's candidate awaiting approval: NAME:VERSION.")
def reject(
    ref: str, note: NoteOpt, by: ByOpt = None, registry: RegistryOpt = DEFAULT_REGISTRY
) -> None:
    _decide(ref, False, note, by, registry)


def _decide(ref: str, approved: bool, note: str, by: str | None, registry: str) -> None:
    from core.registry import approvals

    reg = open_registry(registry)
    try:
        record = approvals.decide(reg, ref, approved, note, by)
    except RegistryError as e:
        raise _fail(e) from None
    typer.echo(f"{record.ref} {record.kind} by {record.by}; the loop acts on its next tick")


@app.command(help="Where a version came from, back to the raw inputs.")
def lineage(ref: str, registry: RegistryOpt = DEFAULT_REGISTRY) -> None:
    reg = open_registry(registry)
    try:
        nodes = reg.lineage(ref)
    except RegistryError as e:
        raise _fail(e) from None
    for node in nodes:
        typer.echo(f"{'  ' * node['depth']}{node['kind']}: {node['id']}  {node['detail']}")


@app.command(help="A version's Hugging Face model card (README.md): NAME[:VERSION|@ALIAS].")
def card(ref: str, registry: RegistryOpt = DEFAULT_REGISTRY) -> None:
    reg = open_registry(registry)
    try:
        typer.echo(reg.card(ref), nl=False)
    except RegistryError as e:
        raise _fail(e) from None


@app.command(help="The audit log; --verify checks its hash chain.")
def audit(
    verify: Annotated[bool, typer.Option("--verify", help="Check the hash chain.")] = False,
    expect_head: Annotated[
        str | None,
        typer.Option(help="A head hash anchored elsewhere: the chain must still contain it."),
    ] = None,
    limit: Annotated[int, typer.Option(help="Show the last N entries.")] = 20,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    reg = open_registry(registry)
    entries = reg.audit.entries()
    for e in entries[-limit:]:
        typer.echo(
            f"{e.seq:>6} {e.at} {e.actor:<20} {e.action:<12} {e.subject} "
            f"{json.dumps(e.details, sort_keys=True)}"
        )
    if verify or expect_head:
        problems = reg.audit.verify(expect_head)
        for p in problems:
            typer.echo(f"TAMPERED: {p}", err=True)
        head = reg.audit.head() or {"count": 0, "hash": AuditLog.GENESIS}
        typer.echo(
            f"audit chain: {len(entries)} entries, "
            f"{'intact' if not problems else f'{len(problems)} problems'}; "
            f"head {head['count']} {head['hash']} (anchor it elsewhere: --expect-head)"
        )
        if problems:
            raise typer.Exit(1)
