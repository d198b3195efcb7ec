"""The report's sections, each a list of blocks drawn from the sources, in page order.

A section whose source is empty says so in a note instead of drawing an empty chart. Those
on the registry live in ``report.versions``, those on the running loop in ``report.traffic``,
approvals and model cards in ``report.governance``.
"""

from __future__ import annotations

from report import governance, traffic, versions
from report.blocks import Block, Graph, Note, Section
from report.lineage import MAX_RAW_PER_SNAPSHOT, lineage_graph, lineage_svg
from report.sources import Sources


def sections(src: Sources) -> list[Section]:
    """Every section of the page, in the order the page shows them."""
    return [
        Section("training", "Training", versions.training(src)),
        Section("evaluation", "Evaluation against the parent", versions.evaluation(src)),
        Section("governance", "Governance", governance.governance(src)),
        Section("feedback", "Feedback over time", traffic.feedback(src)),
        Section("drift", "Drift and feedback per version", traffic.drift(src)),
        Section("serving", "Serving latency and throughput", traffic.serving(src)),
        Section("lineage", "Lineage", _lineage(src)),
    ]


def _lineage(src: Sources) -> list[Block]:
    walks = [walk for walk in src.lineage.values() if walk]
    if not walks:
        return [Note("No model versions registered yet: no lineage to draw.")]
    graph = lineage_graph(walks)
    for alias, number in sorted(src.aliases.items()):  # tag versions with their aliases
        node = graph.nodes.get(f"version:{src.model}:{number}:")
        if node:
            node["sub"] += f" · {alias}"
    return [
        Graph(lineage_svg(graph)),
        Note(
            "Hover a node for its full id and details. Raw files beyond "
            f"{MAX_RAW_PER_SNAPSHOT} per snapshot and feedback events are summarised."
        ),
    ]
