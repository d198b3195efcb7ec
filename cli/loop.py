"""``flywheel loop ...``: run and steer the feedback loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="The feedback loop: consumer + controller actors.", no_args_is_help=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Loop recipe.", exists=True)]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster address; local if unset."),
]


def _cfg(config: Path) -> Any:
    from core.config import load_config
    from schemas.loop import LoopConfig

    return load_config(LoopConfig, config)


def _handles(config: Path, address: str | None) -> tuple[Any, Any, Any]:
    from actors.loop import get_loop
    from jobs.runtime import init_ray

    cfg = _cfg(config)
    init_ray(address)
    try:
        return (cfg, *get_loop(cfg.model_name))
    except ValueError:
        typer.echo(
            f"error: no loop is running for {cfg.model_name}: start it with `flywheel loop run`",
            err=True,
        )
        raise typer.Exit(2) from None


@app.command(help="Start the consumer and controller actors (detached, restartable).")
def run(config: ConfigOpt, address: AddressOpt = None) -> None:
    from actors.loop import start_loop
    from jobs.runtime import init_ray

    cfg = _cfg(config)
    init_ray(address)
    start_loop(cfg)
    typer.echo(f"feedback loop for {cfg.model_name} running; `flywheel loop status` shows it")


@app.command(help="Offsets, statistics per version, pending trigger, job in flight, canary.")
def status(config: ConfigOpt, address: AddressOpt = None) -> None:
    import ray

    cfg, consumer, controller = _handles(config, address)
    state = ray.get(controller.status.remote())
    consumer_status = ray.get(consumer.status.remote())
    versions = {v: ray.get(consumer.version_stats.remote(v)) for v in consumer_status["versions"]}
    typer.echo(
        json.dumps(
            {
                "model": cfg.model_name,
                "consumer": consumer_status,
                "versions": versions,
                "controller": controller_view(state),
                "in_flight": state.get("current"),
                "history": [
                    {k: h.get(k) for k in ("candidate", "outcome", "outcome_reason")}
                    for h in state.get("history", [])
                ],
            },
            indent=2,
            default=str,
        )
    )


CONTROLLER_KEYS = ("phase", "cycle", "paused", "force", "last_decision", "drift")
FROZEN_KEYS = ("frozen", "frozen_by", "frozen_at", "frozen_note")


def controller_view(state: dict[str, Any]) -> dict[str, Any]:
    """The controller's part of ``loop status``; a candidate awaiting a person says how to
    decide on it, so the operator need not look up the command."""
    view = {k: state.get(k) for k in (*CONTROLLER_KEYS, *FROZEN_KEYS)}
    if state.get("phase") == "awaiting_approval":
        candidate = state["current"]["candidate"]
        view["awaiting_approval"] = {
            "candidate": candidate,
            "since": state["current"].get("approval_requested_at"),
            "decide": f"flywheel models approve|reject {candidate} --note '...'",
        }
    return view


@app.command(help="Pause the loop: no new fine-tunes until resumed.")
def pause(config: ConfigOpt, address: AddressOpt = None) -> None:
    import ray

    _, _, controller = _handles(config, address)
    ray.get(controller.pause.remote(True))
    typer.echo("paused")


@app.command(help="Resume a paused loop.")
def resume(config: ConfigOpt, address: AddressOpt = None) -> None:
    import ray

    _, _, controller = _handles(config, address)
    ray.get(controller.pause.remote(False))
    typer.echo("resumed")


@app.command(help="Force a fine-tune on the next tick (cooldown and thresholds ignored).")
def trigger(config: ConfigOpt, address: AddressOpt = None) -> None:
    import ray

    _, _, controller = _handles(config, address)
    ray.get(controller.force_trigger.remote())
    typer.echo("trigger requested")


NoteOpt = Annotated[str, typer.Option("--note", help="Why, for the audit log.")]
ByOpt = Annotated[
    str | None, typer.Option("--by", help="Who, for the audit log; default user@host.")
]


@app.command(help="Pin production: no new cycle, no promotion; a canary is held as it is.")
def freeze(config: ConfigOpt, note: NoteOpt, by: ByOpt = None, address: AddressOpt = None) -> None:
    _set_frozen(config, address, True, note, by)
    typer.echo("frozen: production is pinned until `flywheel loop unfreeze`")


@app.command(help="Let a frozen loop go on: triggers, canaries and promotions again.")
def unfreeze(
    config: ConfigOpt, note: NoteOpt, by: ByOpt = None, address: AddressOpt = None
) -> None:
    _set_frozen(config, address, False, note, by)
    typer.echo("unfrozen")


def _set_frozen(config: Path, address: str | None, frozen: bool, note: str, by: str | None) -> None:
    import ray

    from core.registry import default_actor

    _, _, controller = _handles(config, address)
    # The caller's identity, not the actor's host: that is who froze it.
    ray.get(controller.freeze.remote(frozen, note, by or default_actor()))


@app.command(help="Roll production back to its previous version (ends a canary).")
def rollback(config: ConfigOpt, address: AddressOpt = None) -> None:
    import ray

    _, _, controller = _handles(config, address)
    state = ray.get(controller.rollback.remote("operator rollback"))
    typer.echo(f"rolled back; phase {state['phase']}")


@app.command(help="Stop and remove the loop's actors (state stays in storage).")
def stop(config: ConfigOpt, address: AddressOpt = None) -> None:
    from actors.loop import stop_loop
    from jobs.runtime import init_ray

    cfg = _cfg(config)
    init_ray(address)
    stop_loop(cfg.model_name)
    typer.echo("stopped")
