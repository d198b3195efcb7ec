"""``flywheel``: subcommands map to jobs, services and registry records.

Commands that act on a cluster take ``--address`` (default: ``RAY_ADDRESS``, else a private
local Ray). Every command has ``--help``; ``COMMANDS`` is the map a test keeps in sync with
what ``flywheel --help`` shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.data import app as data_app
from cli.loop import app as loop_app
from cli.models import app as models_app
from cli.quantize import HELP as QUANTIZE_HELP
from cli.quantize import quantize
from cli.report import report
from cli.serving import DEFAULT_SERVE_CONFIG, events_app, run_serve
from core.config import ConfigError, load_config
from core.logs import setup_logging

COMMANDS = {
    "demo": "Run the main job end to end on the embedded default (local Ray, local disk).",
    "ingest": "Turn raw text in object storage into a tokenized dataset snapshot.",
    "train": "Train (pretrain, full or LoRA) on a snapshot with Ray Train + DeepSpeed; register.",
    "generate": "Batch generation: prompts in object storage -> Parquet, on Ray Data (resumable).",
    "models": "Model registry: versions, aliases, lineage, audit.",
    "models list": "Models, their versions and aliases.",
    "models show": "One version as JSON: NAME[:VERSION|@ALIAS] (latest when bare).",
    "models promote": "Point an alias (default production) at a version: NAME:VERSION.",
    "models rollback": "Move an alias back to where it pointed before its last move: NAME.",
    "models approve": "Approve the loop's candidate awaiting approval: NAME:VERSION.",
    "models reject": "Reject the loop's candidate awaiting approval: NAME:VERSION.",
    "models lineage": "Where a version came from, back to the raw inputs.",
    "models audit": "The audit log; --verify checks its hash chain.",
    "models card": "A version's Hugging Face model card (README.md): NAME[:VERSION|@ALIAS].",
    "models quantize": QUANTIZE_HELP,
    "serve": "Serve the OpenAI-compatible gateway and generator locally (a Serve config).",
    "events": "The event log.",
    "events tail": "Show events as they arrive.",
    "events flush": "Flush every event writer into segments (before a node goes away).",
    "loop": "The feedback loop: consumer + controller actors.",
    "loop run": "Start the consumer and controller actors (detached, restartable).",
    "loop status": "Offsets, statistics per version, pending trigger, job in flight, canary.",
    "loop pause": "Pause the loop: no new fine-tunes until resumed.",
    "loop resume": "Resume a paused loop.",
    "loop trigger": "Force a fine-tune on the next tick (cooldown and thresholds ignored).",
    "loop rollback": "Roll production back to its previous version (ends a canary).",
    "loop freeze": "Pin production: no new cycle, no promotion; a canary is held as it is.",
    "loop unfreeze": "Let a frozen loop go on: triggers, canaries and promotions again.",
    "loop stop": "Stop and remove the loop's actors (state stays in storage).",
    "data": "Governance: erase a user's data, apply retention.",
    "data erase": "Erase a user's events, feedback rows and loop state; list versions to retrain.",
    "data compact": "Compact events past the retention window into tombstones (offsets kept).",
    "report": (
        "Write a self-contained HTML report: training, evaluation, feedback, drift, "
        "serving, lineage."
    ),
}

app = typer.Typer(
    help="Flywheel: a closed-loop generative-AI platform on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _setup() -> None:
    # Every command logs the same way (core.logs); `flywheel demo` points it at its home.
    setup_logging()


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML recipe.", exists=True)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a setting: section.key=value (repeatable)."),
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster address; local if unset."),
]


@app.command(help=COMMANDS["ingest"])
def ingest(config: ConfigOpt, set_: SetOpt = None, address: AddressOpt = None) -> None:
    from jobs.ingest import render_report, run_ingest
    from schemas.ingest import IngestConfig

    overrides = list(set_ or [])
    if address:
        overrides.append(f"execution.address={address}")
    cfg = _load(IngestConfig, config, overrides)
    typer.echo(render_report(run_ingest(cfg)))


@app.command(help=COMMANDS["train"])
def train(config: ConfigOpt, set_: SetOpt = None, address: AddressOpt = None) -> None:
    from jobs.train import run_train
    from schemas.train import TrainConfig

    overrides = list(set_ or [])
    if address:
        overrides.append(f"address={address}")
    version = run_train(_load(TrainConfig, config, overrides))
    typer.echo(f"registered {version.ref}")


@app.command(help=COMMANDS["generate"])
def generate(config: ConfigOpt, set_: SetOpt = None, address: AddressOpt = None) -> None:
    from jobs.generate import GenerateError, render, run_generate
    from schemas.generate import GenerateConfig

    overrides = list(set_ or [])
    if address:
        overrides.append(f"ray_address={address}")
    try:
        typer.echo(render(run_generate(_load(GenerateConfig, config, overrides))))
    except GenerateError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


models_app.command("quantize", help=COMMANDS["models quantize"])(quantize)
app.add_typer(models_app, name="models", help=COMMANDS["models"])
app.add_typer(events_app, name="events", help=COMMANDS["events"])
app.add_typer(loop_app, name="loop", help=COMMANDS["loop"])
app.add_typer(data_app, name="data", help=COMMANDS["data"])
app.command(help=COMMANDS["report"])(report)


@app.command(help=COMMANDS["serve"])
def serve(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Serve config (infra/serve.yaml).", exists=True)
    ] = DEFAULT_SERVE_CONFIG,
    address: AddressOpt = None,
) -> None:
    run_serve(config, address)


@app.command(help=COMMANDS["demo"])
def demo(
    home: Annotated[
        Path,
        typer.Option(
            help="Folder for the demo's object store, models and logs.",
            envvar="FLYWHEEL_HOME",
        ),
    ] = Path(".flywheel"),
    size_mb: Annotated[float, typer.Option(help="Size of the generated corpus, MB.")] = 5.0,
    tiny: Annotated[
        bool, typer.Option(help="Use a tiny model trained from scratch instead of SmolLM2.")
    ] = False,
    address: AddressOpt = None,
) -> None:
    from demo.run import run_demo

    if str(home).startswith("s3:"):  # FLYWHEEL_HOME may name a bucket for cluster jobs
        raise typer.BadParameter(
            f"{home}: the demo keeps its home on local disk", param_hint="--home"
        )
    run_demo(home=home, size_mb=size_mb, tiny=tiny, address=address)


def _load(model, path: Path, overrides: list[str]):
    try:
        return load_config(model, path, overrides)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
