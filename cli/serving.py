"""``flywheel serve`` and ``flywheel events tail``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from core.config import expand_vars

DEFAULT_SERVE_CONFIG = Path(__file__).resolve().parent.parent / "infra" / "serve.yaml"
DEFAULT_EVENTS = "${FLYWHEEL_HOME:-.flywheel}/store/events"

events_app = typer.Typer(help="The event log.", no_args_is_help=True)


def load_serve_config(path: Path) -> dict[str, Any]:
    """A Serve config file, checked against Ray's own schema and ours."""
    from ray.serve.schema import ServeDeploySchema

    from schemas.serving import ServeConfig

    raw = yaml.safe_load(Path(path).read_text())
    ServeDeploySchema.model_validate(raw)
    for app in raw["applications"]:
        ServeConfig.model_validate(expand_vars(app.get("args", {}), os.environ))
    return raw


def run_serve(config: Path, address: str | None, blocking: bool = True) -> str:
    """Start Ray (local unless ``address``) and Serve, deploy every application of the
    config, and serve until interrupted. Returns the base URL."""
    from ray import serve

    from jobs.runtime import init_ray
    from serve_apps.app import build_app

    raw = load_serve_config(config)
    init_ray(address)
    http = raw.get("http_options", {})
    host, port = http.get("host", "127.0.0.1"), int(http.get("port", 8000))
    start_serve(host, port)
    for app in raw["applications"]:
        serve.run(
            build_app(app.get("args", {})),
            name=app["name"],
            route_prefix=app.get("route_prefix", "/"),
            logging_config=serve_logging(),
        )
    url = f"http://{host}:{port}"
    if blocking:
        typer.echo(f"serving on {url} (Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return url


def start_serve(host: str, port: int) -> None:
    """Start Serve's controller and proxy on ``host:port`` with :func:`serve_logging`."""
    from ray import serve

    from jobs.runtime import adopt_ray_loggers

    serve.start(http_options={"host": host, "port": port}, logging_config=serve_logging())
    adopt_ray_loggers()  # the driver's "ray.serve" logger: to the file, errors on the terminal


def serve_logging() -> Any:
    """Serve's logging for its controller, proxy and (passed to ``serve.run``) every
    replica: no line per request, files under ``<home>/logs/serve`` where the home is local
    (else Ray's log folder). vLLM's lines go to the replica's worker log."""
    from ray.serve.schema import LoggingConfig

    from core.logs import local_home, logs_dir

    home = local_home()
    folder = {"logs_dir": str(logs_dir(home) / "serve")} if home else {}
    return LoggingConfig(enable_access_log=False, **folder)


@events_app.command("tail", help="Show events as they arrive.")
def tail(
    log: Annotated[str, typer.Option(help="Event log root (path or s3://).")] = DEFAULT_EVENTS,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep waiting.")] = False,
    last: Annotated[int, typer.Option(help="Start with the last N events.")] = 20,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0,
) -> None:
    from core.events import EventLog, Offset

    event_log = EventLog(expand_vars(log, os.environ))
    backlog = list(event_log.read())
    for _, event in backlog[-last:] if last else []:
        typer.echo(format_event(event))
    offset = backlog[-1][0] if backlog else Offset()
    while follow:
        time.sleep(interval)
        for after, event in list(event_log.read(offset)):
            typer.echo(format_event(event))
            offset = after


@events_app.command(
    "flush", help="Flush every event writer into segments (before a node goes away)."
)
def flush(
    address: Annotated[str, typer.Option(help="The Ray cluster.")] = "auto",
) -> None:
    """Run before a node that hosts event writers goes away (the RayService's preStop)."""
    import ray

    from actors.event_writer import flush_all

    ray.init(address=address, log_to_driver=False)
    try:
        for name, n in flush_all().items():
            typer.echo(f"{name}: {n} events flushed")
    except Exception as e:  # storage down: the write-ahead log still holds them
        typer.echo(f"flush failed: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        ray.shutdown()


def format_event(event: Any) -> str:
    if event.type == "feedback":
        extra = f" correction={event.correction!r}" if event.correction else ""
        return f"{event.created_at} feedback {event.response_id} rating={event.rating}{extra}"
    return (
        f"{event.created_at} served   {event.response_id} {event.model_version} "
        f"{event.completion_tokens} tok {event.latency_ms:.0f} ms "
        f"{event.completion[:60]!r}"
    )
