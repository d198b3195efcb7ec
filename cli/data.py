"""``flywheel data erase`` and ``flywheel data compact``: erasure and retention.

Both act on the stores a loop recipe names (event log, registry, loop root). ``erase`` takes
the user id the application knows and pseudonymises it as the gateway does (the secret of
``FLYWHEEL_PSEUDONYM_KEY``, else the one derived from the API keys; one pseudonym per API
key, since the key id scopes it), or pseudonyms as they appear in events. Run
``flywheel events flush`` first, so no event of theirs still waits in a writer's log.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

app = typer.Typer(help="Governance: erase a user's data, apply retention.", no_args_is_help=True)

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="Loop recipe (its stores).", exists=True)
]


@app.command(help="Erase a user's events, feedback rows and loop state; list versions to retrain.")
def erase(
    config: ConfigOpt,
    user: Annotated[
        list[str] | None, typer.Option("--user", help="Raw user id, as the app sent it.")
    ] = None,
    pseudonym: Annotated[
        list[str] | None, typer.Option("--pseudonym", help="An id as events hold it (u-...).")
    ] = None,
    serve_config: Annotated[
        Path | None,
        typer.Option("--serve-config", help="Serve config: its API keys and secret.", exists=True),
    ] = None,
    key_id: Annotated[
        list[str] | None,
        typer.Option("--key-id", help="API key ids the user came through (default: all)."),
    ] = None,
) -> None:
    from core.loop.erasure import erase_user

    cfg = _loop_config(config)
    try:
        names = pseudonyms(user or [], pseudonym or [], serve_config, key_id or [], os.environ)
        report = erase_user(cfg, names)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if report.erasure_id is None:
        typer.echo("nothing to erase: no event of that user in the log or the ledger")
        return
    state = "erased" if report.changed else "already erased (nothing left to change)"
    typer.echo(f"{report.erasure_id}: {state}")
    typer.echo(f"  events tombstoned: {report.events} in {report.segments} segments")
    typer.echo(f"  feedback snapshot rows removed: {sum(report.snapshots.values())}")
    typer.echo(f"  consumer state entries and drift-profile words removed: {report.state_entries}")
    typer.echo(f"  quarantine files and job configs rewritten: {report.other_files}")
    typer.echo("  versions trained on their data (retrain; weights are not unlearned):")
    for v in report.versions or ["(none)"]:
        typer.echo(f"    {v}")


@app.command(help="Compact events past the retention window into tombstones (offsets kept).")
def compact(
    config: ConfigOpt,
    retention_days: Annotated[
        float | None, typer.Option(help="Override the recipe's retention_days.")
    ] = None,
) -> None:
    from core.loop.erasure import apply_retention

    cfg = _loop_config(config)
    try:
        changed = apply_retention(cfg, retention_days)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    days = cfg.retention_days if retention_days is None else retention_days
    typer.echo(
        f"retention {days:g} days: {sum(changed.values())} events compacted "
        f"in {len(changed)} segments"
    )


def pseudonyms(
    users: list[str],
    given: list[str],
    serve_config: Path | None,
    key_ids: list[str],
    environ: Any,
) -> set[str]:
    """The pseudonyms events hold for these users (one per API key), and ``given`` as is."""
    from serve_apps.principals import KeyRing, Pseudonyms

    bad = [p for p in given if not p.startswith("u-")]
    if bad:
        raise ValueError(f"not a user pseudonym (u- and 16 hex digits): {bad[0]!r}")
    out = set(given)
    if not users:
        if not out:
            raise ValueError("name the user: --user ID (raw) or --pseudonym u-...")
        return out
    for gateway in _gateways(serve_config, environ):
        has_keys = gateway.api_keys or environ.get(gateway.api_keys_env, "").strip()
        ring = KeyRing(gateway, dict(environ)) if has_keys else None
        named = environ.get(gateway.pseudonym_key_env, "").strip().encode()
        secret = ring.secret() if ring else named
        scopes = key_ids or ([k.id for k in ring.keys] if ring else [])
        if not scopes or not secret:
            raise ValueError(
                "cannot pseudonymise: pass --serve-config (or set the API keys' variable) "
                f"so the key ids and secret are known, or --key-id with {gateway.pseudonym_key_env}"
            )
        make = Pseudonyms(secret)
        out.update(p for u in users for s in scopes if (p := make("user", u, s)))
    return out


def _gateways(serve_config: Path | None, environ: Any) -> list[Any]:
    """Every application's gateway settings in a Serve config (defaults without one)."""
    from core.config import expand_vars
    from schemas.serving import GatewaySettings

    if serve_config is None:
        return [GatewaySettings()]
    raw = yaml.safe_load(serve_config.read_text()) or {}
    apps = [a.get("args", {}) for a in raw.get("applications", [])] or [raw]
    return [
        GatewaySettings.model_validate(expand_vars(a.get("gateway", {}), environ)) for a in apps
    ]


def _loop_config(config: Path) -> Any:
    from core.config import ConfigError, load_config
    from schemas.loop import LoopConfig

    try:
        return load_config(LoopConfig, config)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
