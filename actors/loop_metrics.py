"""The feedback loop's Prometheus gauges, and the name of every metric the project registers.

Metrics made with ``ray.util.metrics`` reach Prometheus with a ``ray_`` prefix:
``flywheel_loop_phase`` is scraped as ``ray_flywheel_loop_phase``. The Grafana dashboard
(``infra/grafana/flywheel-dashboard.json``) queries those names, and a unit test checks that
every name it uses is in :data:`METRIC_NAMES`.

What the loop's actors are meant to set (the feedback consumer and the controller):

- ``flywheel_loop_phase{model, phase}``: 1 for the current phase and 0 for every other
  (idle, publishing, training, evaluating, awaiting_approval, canary), so a phase change
  leaves no stale 1;
- ``flywheel_loop_cycle{model}``: the controller's cycle number;
- ``flywheel_loop_pending_examples{model}``: curated examples waiting for the next fine-tune;
- ``flywheel_loop_consumer_offset_events{model}``: events the consumer has committed;
- ``flywheel_version_acceptance{model_version}``: share of rated responses rated 4 or more.
"""

from __future__ import annotations

from typing import Any

from core.loop.state import Phase

# Registered in serve_apps/telemetry.py and serve_apps/generator.py.
SERVING_METRIC_NAMES = (
    "flywheel_requests_total",
    "flywheel_request_errors_total",
    "flywheel_request_latency_seconds",
    "flywheel_time_to_first_token_seconds",
    "flywheel_generated_tokens_total",
    "flywheel_batch_size",
    "flywheel_feedback_total",
)
# Registered by loop_metrics() below.
LOOP_METRIC_NAMES = (
    "flywheel_loop_phase",
    "flywheel_loop_cycle",
    "flywheel_loop_pending_examples",
    "flywheel_loop_consumer_offset_events",
    "flywheel_version_acceptance",
)
METRIC_NAMES = [*SERVING_METRIC_NAMES, *LOOP_METRIC_NAMES]


def loop_metrics() -> dict[str, Any]:
    """The loop's gauges, by short name. Call once per actor (Ray needs no cluster to build
    them; values are exported once the actor runs inside one)."""
    from ray.util import metrics

    model = ("model",)
    return {
        "phase": metrics.Gauge(
            "flywheel_loop_phase",
            description="1 for the loop's current phase, 0 for the others.",
            tag_keys=("model", "phase"),
        ),
        "cycle": metrics.Gauge(
            "flywheel_loop_cycle", description="The controller's cycle number.", tag_keys=model
        ),
        "pending_examples": metrics.Gauge(
            "flywheel_loop_pending_examples",
            description="Curated examples waiting for the next fine-tune.",
            tag_keys=model,
        ),
        "consumer_offset": metrics.Gauge(
            "flywheel_loop_consumer_offset_events",
            description="Events the feedback consumer has committed.",
            tag_keys=model,
        ),
        "acceptance": metrics.Gauge(
            "flywheel_version_acceptance",
            description="Share of rated responses rated 4 or more, per model version.",
            tag_keys=("model_version",),
        ),
    }


def export_loop(
    metrics: dict[str, Any], model_name: str, state: dict[str, Any], consumer: Any
) -> None:
    """Set the loop's gauges from the controller's state and the consumer's counters."""
    model = {"model": model_name}
    for phase in Phase:
        metrics["phase"].set(float(state["phase"] == phase), tags={**model, "phase": phase.value})
    metrics["cycle"].set(state["cycle"], tags=model)
    status = consumer.status()
    metrics["consumer_offset"].set(status["events"], tags=model)
    metrics["pending_examples"].set(status["candidates"] - status["published"], tags=model)
    for version in status["versions"]:
        stats = consumer.version_stats(version)
        if stats.get("rated"):
            acceptance = stats["accepted"] / stats["rated"]
            metrics["acceptance"].set(acceptance, tags={"model_version": version})
