"""The markdown sections of a model card (``core.registry.card`` adds the front matter).

Each section is a list of lines built from :class:`core.registry.card.CardFacts`. Strings
from records are escaped for markdown tables and HTML (a description or a gate reason may
hold anything, ``core.registry.card_markdown``), and a fact no record holds reads "not
recorded".
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from core.registry.card_markdown import NOT_RECORDED, by_reason, dig, md, num, table
from schemas.feedback import FeedbackManifest
from schemas.snapshot import SnapshotManifest

if TYPE_CHECKING:
    from core.registry.card import CardFacts

# (path in a role's scores, what it measures) of the evaluation table.
SCORES = (
    (("feedback_loss",), "loss on held-out corrections (lower is better)"),
    (("corrected", "accuracy"), "corrections answered as users said"),
    (("accepted", "accuracy"), "accepted answers still given"),
    (("heldout_loss",), "loss on held-out training data (lower is better)"),
    (("qa", "accuracy"), "QA accuracy"),
)
HALLUCINATION_KEYS = ("rate", "n", "fabricated", "abstained", "correct")
QUANTIZED = {
    "int8-dynamic": "Linear weights int8 with one scale per output channel after smoothing, "
    "embeddings and the output head as the source stored them; activations are quantized per "
    "token on the fly and multiplied in int8 by PyTorch's CPU kernels (the hf engine; vLLM "
    "refuses it).",
    "bf16": "every weight in bfloat16: a plain Hugging Face folder both engines serve.",
}


def sections(facts: CardFacts) -> list[str]:
    """Every section of the card, in order, as markdown lines."""
    return [
        *_header(facts),
        *_intended_use(facts),
        *_training_data(facts),
        *(_quantization(facts) if facts.version.quantization else _procedure(facts)),
        *_evaluation(facts),
        *_feedback(facts),
        *_approvals(facts),
        *_lineage(facts),
    ]


def _header(f: CardFacts) -> list[str]:
    v = f.version
    kind = {
        "lora": f"LoRA adapter on {md(v.base)}",
        "hf-int8": "Hugging Face model folder, Linear weights int8 (hf engine, CPU)",
    }.get(v.format, "Hugging Face model folder")
    rows = [
        ["Model", f"{md(v.name)}, version {v.version}"],
        ["Format", kind],
        ["Aliases", ", ".join(f.aliases) or "none"],
        ["Created", f"{md(v.created_at)} by {md(v.created_by)}"],
        ["Content sha256", f"`{v.content_sha256}`"],
        ["Code version", md(v.lineage.code_version)],
        ["Training job", md(v.lineage.job)],
    ]
    return [
        f"# {md(v.ref)}",
        "",
        md(v.description or "No description recorded."),
        "",
        *table(["", ""], rows),
    ]


def _intended_use(f: CardFacts) -> list[str]:
    v = f.version
    lines = [
        "## Intended use and limits",
        "",
        f"A version of `{md(v.name)}` from the Flywheel loop, served behind the gateway's "
        "aliases to the deployment whose users' feedback it learns from. It was judged only by "
        "the evaluations below (the gate against its parent); uses beyond them are untested.",
        "",
        "Feedback teaches what this deployment's users corrected and rated, their mistakes and "
        "leanings included: curation quarantines injected instructions, links, spam, floods "
        "and outliers, but cannot "
        "vouch for the rest. Nothing here was reviewed for other languages, domains or users.",
        "",
    ]
    if not v.metrics.get("license"):
        lines += [
            "No license was recorded for this version (the card reads `license` from its "
            "metrics), so the front matter says `other`: the license of its base model "
            "applies where it has one.",
            "",
        ]
    return lines


def _training_data(f: CardFacts) -> list[str]:
    lines = ["## Training data", ""]
    if not f.snapshots:
        return [*lines, "No dataset snapshot recorded.", ""]
    for snapshot_id, uri, m in f.snapshots:
        lines += [f"### Snapshot `{md(snapshot_id)}`", ""]
        if isinstance(m, SnapshotManifest):
            lines += _corpus(m)
        elif isinstance(m, FeedbackManifest):
            lines += _examples(m)
        else:
            lines += [f"Not readable at {md(uri)}.", ""]
    return lines


def _corpus(m: SnapshotManifest) -> list[str]:
    c = m.counts
    return [
        f"- Corpus `{md(m.name)}`, created {md(m.created_at)} from {md(m.input_uri)}",
        f"- {c.files:,} files, {c.records_in:,} records read; {c.documents:,} documents, "
        f"{c.tokens:,} tokens in {c.blocks:,} blocks of {m.block_size}",
        f"- Quarantined (unreadable), by reason: {by_reason(c.quarantined)}",
        f"- Removed (filtered, duplicates), by reason: {by_reason(c.removed)}",
        f"- PII redactions, by type: {by_reason(c.pii)}",
        f"- Pipeline config hash `{md(m.config_hash)}`, code {md(m.code_version)}",
        "",
    ]


def _examples(m: FeedbackManifest) -> list[str]:
    c = m.counts
    return [
        f"- Feedback `{md(m.name)}` ({m.role}), created {md(m.created_at)}",
        f"- {c.sft:,} corrections, {c.preference:,} preference pairs, {c.kto_desirable:,} "
        f"answers rated good and {c.kto_undesirable:,} rated bad",
        f"- Rehearsal corpus snapshot: {md(m.corpus_snapshot or 'none')}",
        "",
    ]


def _procedure(f: CardFacts) -> list[str]:
    cfg, m = f.version.lineage.training_config, f.version.metrics
    stages = cfg.get("stages") or []
    objectives = ", ".join(f"{s.get('objective')} ({s.get('steps')} steps)" for s in stages)
    scaling = cfg.get("scaling") or {}
    items = [
        ("Mode", cfg.get("mode")),
        ("Objective(s)", objectives or cfg.get("objective")),
        ("Training config hash", f.version.lineage.training_config_hash),
        ("Optimizer", _optim(cfg.get("optim"))),
        ("Hardware", _hardware(scaling, m)),
        ("Steps", num(m.get("step"))),
        ("Tokens", num(m.get("tokens"))),
        ("Throughput (tokens/s)", num(m.get("tokens_per_s"))),
        ("MFU", num(m.get("mfu"), percent=True)),
        ("Final loss", num(m.get("loss"))),
        ("Parameters", _params(m)),
    ]
    if cfg.get("mode") == "lora":
        lora = cfg.get("lora") or {}
        items.append(("LoRA", f"r {lora.get('r')}, alpha {lora.get('alpha')}"))
    packages = ", ".join(f"{k} {v}" for k, v in sorted(f.version.lineage.packages.items()))
    items.append(("Packages", packages or None))
    lines = ["## Training procedure", ""]
    return [*lines, *(f"- **{k}**: {md(v)}" for k, v in items), ""]


def _quantization(f: CardFacts) -> list[str]:
    """What a quantized version has instead of a training procedure: its source and method,
    its size, and the quality it costs by its latest evaluation against the source."""
    q, size = f.version.quantization, sum(x.size for x in f.version.files)
    ratio = size / q.source_bytes if q.source_bytes else float("nan")
    return [
        "## Quantization",
        "",
        f"Quantized from `{md(q.source)}` with `{md(q.method)}`: {QUANTIZED.get(q.method, '')}",
        "",
        f"- **Size on disk**: {size:,} bytes; its source {q.source_bytes:,} ({ratio:.2f}x)",
        f"- **Quality against the source**: {_quality(f, q.source)}",
        "",
    ]


def _quality(f: CardFacts, source: str) -> str:
    """The held-out loss and next-token agreement of the latest evaluation against ``source``."""
    against = [r for r in f.evaluations if dig(r, ("baseline", "version")) == source]
    if not against:
        return f"not measured (evaluate it with `baseline: {md(source)}`)"
    r = against[-1]
    delta = r.get("delta") or {}
    change = delta.get("heldout_loss")
    loss, base = dig(r, ("candidate", "heldout_loss")), dig(r, ("baseline", "heldout_loss"))
    return (
        f"held-out loss {num(loss)} against {num(base)} "
        f"({f'{change:+.4g}' if isinstance(change, float) else NOT_RECORDED}); the same next "
        f"token as the source at {num(delta.get('top1_agreement'), percent=True)} of held-out "
        f"tokens (evaluation of {md(r.get('at'))})"
    )


def _optim(optim: dict[str, Any] | None) -> str | None:
    if not optim:
        return None
    keys = ("lr", "max_steps", "schedule", "warmup_steps")
    return ", ".join(f"{k} {optim[k]}" for k in keys if k in optim)


def _params(metrics: dict[str, Any]) -> str | None:
    if metrics.get("params") is None:
        return None
    return f"{num(metrics['params'])} ({num(metrics.get('trainable_params'))} trainable)"


def _hardware(scaling: dict[str, Any], metrics: dict[str, Any]) -> str | None:
    workers = metrics.get("workers") or scaling.get("num_workers")
    if not workers:
        return None
    device = "GPU" if scaling.get("use_gpu") else "CPU"
    per = scaling.get("resources_per_worker")
    peak = metrics.get("peak_flops_per_worker")
    each = ", ".join(f"{n:g} {r}" for r, n in sorted((per or {}).items()))
    text = f"{workers} {device} workers" + (f", {each} each" if each else "")
    return text + (f", peak {peak:.3g} FLOP/s per worker" if peak else "")


def _evaluation(f: CardFacts) -> list[str]:
    lines = ["## Evaluation against the parent", ""]
    if not f.evaluations:
        lines += ["No evaluation report: this version was not evaluated against a parent.", ""]
    for i, r in enumerate(f.evaluations, start=1):
        lines += _one_evaluation(i, r)
    for r in f.reports:
        if r.get("kind") == "loop_decision":
            lines.append(
                f"- Loop decision (cycle {md(r.get('cycle'))}): **{md(r.get('decision'))}**: "
                f"{md(r.get('reason'))}"
            )
    return [*lines, ""] if lines[-1] else lines


def _one_evaluation(i: int, r: dict[str, Any]) -> list[str]:
    cand, prod = r.get("candidate") or {}, r.get("production") or r.get("baseline") or {}
    lines = [f"### Evaluation {i} ({md(r.get('at'))}, by {md(r.get('actor'))})", ""]
    if r.get("baseline"):
        lines.append(
            f"Candidate {md(cand.get('version'))} against the baseline {md(prod.get('version'))}"
            " (the parent columns): differences only, no gate."
        )
    elif prod:
        gate = r.get("gate") or {}
        verdict = {True: "passed", False: "failed"}.get(gate.get("passed"), NOT_RECORDED)
        lines.append(
            f"Candidate {md(cand.get('version'))} against its parent {md(prod.get('version'))}. "
            f"Gate **{verdict}**: {md(gate.get('reason'))}."
        )
    else:  # a standalone evaluation: no parent, so no gate
        lines.append(f"{md(cand.get('version'))} scored alone: no parent, no gate.")
    lines.append("")
    rows = [[what, num(dig(cand, p)), num(dig(prod, p))] for p, what in SCORES]
    rows = [row for row in rows if row[1:] != [NOT_RECORDED] * 2]
    if rows:
        lines += table(["measure", "candidate", "parent"], rows)
    return lines + _hallucination(cand, prod) + _bias(cand, prod)


def _hallucination(cand: dict[str, Any], prod: dict[str, Any]) -> list[str]:
    if not (cand.get("hallucination") or prod.get("hallucination")):
        return []
    rows = [
        [key, num(dig(cand, ("hallucination", key))), num(dig(prod, ("hallucination", key)))]
        for key in HALLUCINATION_KEYS
    ]
    return ["Hallucination:", "", *table(["", "candidate", "parent"], rows)]


def _bias(cand: dict[str, Any], prod: dict[str, Any]) -> list[str]:
    if not (cand.get("bias") or prod.get("bias")):
        return []
    cats = {
        **(dig(prod, ("bias", "categories")) or {}),
        **(dig(cand, ("bias", "categories")) or {}),
    }
    rows = []
    for cat in sorted(cats):
        c, p = (dig(s, ("bias", "categories", cat)) or {} for s in (cand, prod))
        rows.append(
            [
                md(cat),
                num(c.get("spread")),
                num(p.get("spread")),
                num(c.get("divergence")),
                num(p.get("divergence")),
                num(c.get("n", p.get("n"))),
            ]
        )
    rows.append(
        [
            "**largest spread**",
            num(dig(cand, ("bias", "max_spread"))),
            num(dig(prod, ("bias", "max_spread"))),
            "",
            "",
            "",
        ]
    )
    headers = ["category", "spread (cand.)", "spread (parent)", "divergence (cand.)"]
    return ["Bias by category:", "", *table([*headers, "divergence (parent)", "n"], rows)]


def _feedback(f: CardFacts) -> list[str]:
    lines = ["## Feedback lineage", ""]
    feedback = [(sid, m) for sid, _, m in f.snapshots if isinstance(m, FeedbackManifest)]
    if not feedback:
        return [*lines, "Not trained on feedback: no feedback snapshot in its training data.", ""]
    for sid, m in feedback:
        principals = NOT_RECORDED if m.principals is None else f"{m.principals:,}"
        lines += [
            f"- Snapshot `{md(sid)}`: {len(m.parents):,} events from {principals} distinct "
            f"principals; quarantined by reason: {by_reason(m.counts.quarantined)}",
        ]
    return [*lines, ""]


def _approvals(f: CardFacts) -> list[str]:
    approvals = [e for e in f.entries if e.action.startswith("approval.")]
    moves = [e for e in f.entries if e.action == "alias.move"]
    lines = ["## Approvals and promotions", ""]
    if approvals:
        rows = [
            [
                md(e.at),
                md(e.action),
                md(e.details.get("by")),
                md(e.details.get("note")),
                md(e.actor),
                str(e.seq),
            ]
            for e in approvals
        ]
        lines += table(["at", "action", "by", "note", "recorded by", "audit entry"], rows)
    else:
        lines += ["No approval recorded.", ""]
    if not moves:
        return [*lines, "No alias has pointed at this version.", ""]
    rows = [
        [
            md(e.at),
            md(e.subject),
            _unset(e.details.get("from")),
            _unset(e.details.get("to")),
            md(e.details.get("reason")),
            md(e.actor),
            str(e.seq),
        ]
        for e in moves
    ]
    return [*lines, *table(["at", "alias", "from", "to", "reason", "by", "audit entry"], rows)]


def _unset(version: Any) -> str:
    """An alias's version in a move, "unset" where it pointed nowhere."""
    return "unset" if version is None else md(version)


def _lineage(f: CardFacts) -> list[str]:
    """The registry's lineage walk, raw files and source events counted, not listed."""
    lines: list[str] = []
    leaves: Counter[int] = Counter()
    for node in f.lineage:
        if node["kind"] in ("raw", "source") and lines:
            leaves[len(lines) - 1] += 1
            continue
        indent = "  " * node["depth"]
        lines.append(f"{indent}- {node['kind']} `{md(node['id'])}`: {md(node['detail'])}")
    for i, n in leaves.items():
        lines[i] += f" ({n:,} sources: raw files or events)"
    return ["## Lineage", "", *lines, ""]
