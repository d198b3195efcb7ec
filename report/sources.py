"""What the report reads: the registry, the event log and the loop's state, each read once.

Every source is optional; one that is missing or unreadable leaves its part empty and, when
it failed to read, a line in ``problems`` that the page shows at the top.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core import storage
from core.events import EventLog
from core.loop.statelog import read_state
from core.registry import ModelRegistry, card
from core.storage import StorageError
from schemas.events import Feedback, ServedOutput
from schemas.registry import AuditEntry, ModelVersion
from schemas.storage import StorageSettings

READ_ERRORS = (StorageError, OSError, ValueError)


@dataclass
class Sources:
    """What the report reads, each part empty when its source is."""

    model: str | None = None
    others: list[str] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)
    versions: list[ModelVersion] = field(default_factory=list)
    evals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    lineage: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    served: dict[str, ServedOutput] = field(default_factory=dict)
    feedback: list[Feedback] = field(default_factory=list)
    controller: dict[str, Any] | None = None
    cards: dict[str, str] = field(default_factory=dict)
    approvals: list[AuditEntry] = field(default_factory=list)
    consumer: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


def gather(
    registry_uri: str,
    event_log_uri: str,
    loop_uri: str | None,
    model: str | None = None,
    settings: StorageSettings | None = None,
) -> Sources:
    """Read every source the report draws from; a failing one is reported, not raised."""
    src = Sources()
    try:
        _read_registry(src, ModelRegistry(registry_uri, settings), model)
    except READ_ERRORS as e:  # an operator wants the rest of the page even so
        src.problems.append(f"Could not read the registry {registry_uri}: {e}")
    try:
        _read_events(src, EventLog(event_log_uri, settings))
    except READ_ERRORS as e:
        src.problems.append(f"Could not read the event log {event_log_uri}: {e}")
    if loop_uri:
        root = storage.resolve(loop_uri, settings)
        src.controller = _read_state(src, root.join("controller", "states"), read_state)
        src.consumer = _read_state(
            src, root.join("consumer", "state.json"), storage.read_json_if_exists
        )
    return src


def _read_registry(src: Sources, registry: ModelRegistry, model: str | None) -> None:
    models = registry.models()
    src.model = model or (models[0] if models else None)
    if model and model not in models:
        src.problems.append(f"No model {model!r} in the registry; it has: {', '.join(models)}")
    src.others = [m for m in models if m != src.model]
    if src.model is None:
        return
    src.aliases = registry.aliases(src.model)
    src.versions = sorted(registry.versions(src.model), key=lambda v: v.version)
    walked: set[str] = set()
    for v in reversed(src.versions):
        src.evals[v.ref] = registry.eval_reports(v.ref)
        if v.ref not in walked:  # a newer version's walk already holds all its ancestors
            src.lineage[v.ref] = registry.lineage(v.ref)
            walked.update(n["id"] for n in src.lineage[v.ref] if n["kind"] == "version")
    _read_governance(src, registry)


def _read_governance(src: Sources, registry: ModelRegistry) -> None:
    """Each version's model card (built, not stored, where none was: the report only reads)
    and the approvals of the model's versions in the audit log."""
    for v in src.versions:
        try:
            src.cards[v.ref] = card.read_card(registry, v) or card.build_card(registry, v.ref)
        except READ_ERRORS as e:  # one card must not hide the rest of the registry
            src.problems.append(f"Could not build the model card of {v.ref}: {e}")
    prefix = f"{src.model}:"
    src.approvals = [
        e
        for e in registry.audit.entries()
        if e.action.startswith("approval.") and e.subject.startswith(prefix)
    ]


def _read_events(src: Sources, log: EventLog) -> None:
    for _, event in log.read():
        if isinstance(event, ServedOutput):
            if src.model is None or event.model == src.model:
                src.served[event.response_id] = event
        else:
            src.feedback.append(event)


def _read_state(
    src: Sources, loc: storage.Location, read: Callable[[storage.Location], dict[str, Any] | None]
) -> dict[str, Any] | None:
    try:
        return read(loc)
    except READ_ERRORS as e:
        src.problems.append(f"Could not read {loc.uri}: {e}")
        return None
