"""``flywheel report``: write the operator's report, one self-contained HTML file."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.models import DEFAULT_REGISTRY
from cli.serving import DEFAULT_EVENTS

DEFAULT_LOOP = "${FLYWHEEL_HOME:-.flywheel}/store/loop"
DEFAULT_OUT = "${FLYWHEEL_HOME:-.flywheel}/report.html"


def report(
    registry: Annotated[
        str, typer.Option(envvar="FLYWHEEL_REGISTRY", help="Registry root (path or s3://).")
    ] = DEFAULT_REGISTRY,
    events: Annotated[str, typer.Option(help="Event log root (path or s3://).")] = DEFAULT_EVENTS,
    loop: Annotated[
        str, typer.Option(help="Feedback loop state root; '' when there is no loop.")
    ] = DEFAULT_LOOP,
    model: Annotated[
        str | None, typer.Option(help="Model name; the registry's first model when unset.")
    ] = None,
    out: Annotated[
        str, typer.Option(help="Where to write the HTML (path or s3://).")
    ] = DEFAULT_OUT,
) -> None:
    """Build the report from the stores and print where it was written."""
    from core.config import expand_vars
    from report.page import build_report, write_report

    def expand(value: str) -> str:
        return expand_vars(value, os.environ)

    html = build_report(expand(registry), expand(events), expand(loop) or None, model)
    typer.echo(write_report(expand(out), html))
