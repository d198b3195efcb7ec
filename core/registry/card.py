"""Hugging Face model cards of registered versions, built from what the registry holds.

A card is a ``README.md`` with YAML front matter (``base_model``, ``datasets``, ``license``,
``tags``, ``model-index``) and sections on intended use, training data, training procedure,
the evaluation against the parent, feedback lineage, approvals and alias moves. Every fact
comes from a record (the version's manifest, its snapshots' manifests, its evaluation
reports, the audit log); what no record holds reads "not recorded", never a guess.

It is stored at ``<name>/versions/<NNNNNN>/card/README.md``, outside ``files/``: the card
changes as evaluations and promotions arrive, while the files and their hash never do.
:class:`core.registry.versions.ModelRegistry` refreshes it after a registration, an
evaluation report and an alias move to the version, and ``download`` puts it in the folder.
The text is written in ``core.registry.card_text`` (its markdown helpers in
``core.registry.card_markdown``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from core import storage
from core.registry.card_markdown import dig
from core.registry.card_text import sections
from schemas.registry import AuditEntry, ModelVersion
from schemas.storage import StorageSettings

if TYPE_CHECKING:
    from core.registry.versions import ModelRegistry

logger = logging.getLogger(__name__)

# (path in a role's scores, metric type, metric name, dataset group) of the model-index.
INDEX_METRICS = (
    (("feedback_loss",), "loss", "Loss on held-out corrections", "feedback"),
    (("corrected", "accuracy"), "accuracy", "Corrections answered as users said", "feedback"),
    (("accepted", "accuracy"), "accuracy", "Accepted answers still given", "feedback"),
    (("heldout_loss",), "loss", "Loss on held-out training data", "heldout"),
    (("qa", "accuracy"), "accuracy", "QA accuracy", "qa"),
    (("hallucination", "rate"), "hallucination_rate", "Hallucination rate", "hallucination"),
    (("bias", "max_spread"), "bias_max_spread", "Largest spread across categories", "bias"),
)
FIXED_DATASETS = {
    "qa": ("question-answer pairs", "flywheel/qa"),
    "hallucination": ("hallucination probes", "flywheel/hallucination-probes"),
    "bias": ("bias probes", "flywheel/bias-probes"),
}  # distinct types: Hugging Face merges the results of datasets that share one


@dataclass
class CardFacts:
    """Everything a card says, read from the registry once."""

    version: ModelVersion
    aliases: list[str]
    reports: list[dict[str, Any]]
    snapshots: list[tuple[str, str, Any]]  # (snapshot id, uri, manifest or None)
    lineage: list[dict[str, Any]]
    entries: list[AuditEntry] = field(default_factory=list)  # approvals and alias moves

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        return [r for r in self.reports if r.get("kind", "evaluation") == "evaluation"]


def gather(registry: ModelRegistry, ref: str) -> CardFacts:
    """Read what the card of ``ref`` says: manifests, reports, lineage and audit entries."""
    from core.data.feedback import open_training_data

    version = registry.get(ref)
    settings = StorageSettings(s3=registry.root.s3) if registry.root.s3 else None
    snapshots = []
    for snap in version.lineage.dataset_snapshots:
        try:
            manifest = open_training_data(snap.uri, settings)[1]
        except (FileNotFoundError, storage.StorageError, ValueError):
            manifest = None  # the card says it could not be read
        snapshots.append((snap.snapshot_id, snap.uri, manifest))
    aliases = registry.aliases(version.name)
    return CardFacts(
        version=version,
        aliases=sorted(a for a, n in aliases.items() if n == version.version),
        reports=registry.eval_reports(version.ref),
        snapshots=snapshots,
        lineage=registry.lineage(version.ref),
        entries=[e for e in registry.audit.entries() if _concerns(e, version)],
    )


def _concerns(entry: AuditEntry, v: ModelVersion) -> bool:
    """An approval of the version, or a move of one of its model's aliases to or from it."""
    if entry.action.startswith("approval."):
        return entry.subject == v.ref
    moved = {entry.details.get("to"), entry.details.get("from")}
    return (
        entry.action == "alias.move"
        and entry.subject.startswith(f"{v.name}@")
        and (v.version in moved)
    )


def build_card(registry: ModelRegistry, ref: str) -> str:
    """The model card of ``ref`` as it stands now (not stored)."""
    return render(gather(registry, ref))


def render(facts: CardFacts) -> str:
    front = yaml.safe_dump(front_matter(facts), sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n".join(sections(facts))


def front_matter(facts: CardFacts) -> dict[str, Any]:
    """The card's YAML metadata, in the Hugging Face model card's field names."""
    v = facts.version
    # "other" when no license was recorded: the text says so instead of guessing one.
    meta: dict[str, Any] = {"license": v.metrics.get("license") or "other"}
    base = v.lineage.parent or v.base or v.lineage.base_model
    if base:
        meta["base_model"] = base
    if v.quantization:  # the Hub's name for a quantized derivative of base_model
        meta["base_model_relation"] = "quantized"
    datasets = [sid for sid, _, _ in facts.snapshots]
    datasets += [r["feedback_snapshot"] for r in facts.reports if _is_decision_snapshot(r)]
    if datasets:
        meta["datasets"] = list(dict.fromkeys(datasets))
    if v.format != "hf-int8":  # its int8 layout loads with Flywheel's loader only
        meta["library_name"] = "peft" if v.format == "lora" else "transformers"
    meta["pipeline_tag"] = "text-generation"
    quantized = [f"quantized-{v.quantization.method}"] if v.quantization else []
    meta["tags"] = ["flywheel", v.format, *quantized, *(f"alias-{a}" for a in facts.aliases)]
    index = model_index(facts)
    if index:
        meta["model-index"] = index
    return meta


def _is_decision_snapshot(report: dict[str, Any]) -> bool:
    return report.get("kind") == "loop_decision" and isinstance(
        report.get("feedback_snapshot"), str
    )


def model_index(facts: CardFacts) -> list[dict[str, Any]]:
    """The candidate's scores in its latest evaluation, one result per dataset they came
    from (``[]`` when it was never evaluated). The parent's scores are in the text: the
    model-index is about this model."""
    if not facts.evaluations:
        return []
    report = facts.evaluations[-1]
    scores = report.get("candidate") or {}
    results: dict[str, dict[str, Any]] = {}
    for path, kind, name, group in INDEX_METRICS:
        value = dig(scores, path)
        if not _finite(value):
            continue
        if group not in results:
            ds_name, ds_type = _dataset(report, group)
            results[group] = {
                "task": {"type": "text-generation", "name": "Text Generation"},
                "dataset": {"name": ds_name, "type": ds_type},
                "metrics": [],
            }
        results[group]["metrics"].append({"type": kind, "value": float(value), "name": name})
    return [{"name": facts.version.ref, "results": list(results.values())}] if results else []


def _dataset(report: dict[str, Any], group: str) -> tuple[str, str]:
    if group in FIXED_DATASETS:
        return FIXED_DATASETS[group]
    uri = report.get(f"{group}_snapshot") or ""
    snapshot_id = str(uri).rstrip("/").rsplit("/", 1)[-1] or "unknown"
    kind = "feedback-snapshot" if group == "feedback" else "dataset-snapshot"
    return f"{group} snapshot {snapshot_id}", f"flywheel/{kind}"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- storing ------------------------------------------------------------------------------------


def read_card(registry: ModelRegistry, version: ModelVersion) -> str | None:
    """The stored card of a version, or None when none was stored yet."""
    loc = registry.card_location(version)
    return storage.read_bytes(loc).decode() if storage.exists(loc) else None


def store_card(registry: ModelRegistry, ref: str) -> str:
    """Build the card of ``ref`` and write it (atomically) next to the version's files."""
    text = build_card(registry, ref)
    storage.write_text(registry.card_location(registry.get(ref)), text)
    return text


def refresh_card(registry: ModelRegistry, ref: str) -> str | None:
    """:func:`store_card`, for callers whose own change is done and must not fail over the
    card (a registration, an evaluation report, an alias move): a failure is logged and the
    old card, if any, stays until the next refresh."""
    try:
        return store_card(registry, ref)
    except Exception:  # the card is derived: never worth failing the change it follows
        logger.warning("could not refresh the model card of %s", ref, exc_info=True)
        return None


def folder_card(registry: ModelRegistry, version: ModelVersion) -> str | None:
    """The card a downloaded folder carries: the stored one, else one built now and not
    stored (a reader, e.g. a serving replica, may not write the registry), else None."""
    try:
        return read_card(registry, version) or build_card(registry, version.ref)
    except Exception:  # the files are what the caller needs; the card is a courtesy
        logger.warning("could not build the model card of %s", version.ref, exc_info=True)
        return None
