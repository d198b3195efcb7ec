"""The lineage graph of the operator's report: raw data and feedback -> snapshots -> versions.

Merges the registry's lineage walks of a model's versions into one graph, lays it out in
columns (inputs left of what they feed) and draws it as inline SVG with the template
``templates/lineage.svg``. Large inputs are summarised: a few raw files per snapshot, and one
node for a snapshot's feedback events. The layout is a few lines of pure code: Graphviz would
be a native tool to install, and NetworkX's layouts do not know that data flows left to right
in stages.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from report.numbers import natural
from report.render import render

KIND_COLORS = {
    "raw": "#9c755f",
    "feedback": "#f28e2b",
    "snapshot": "#59a14f",
    "version": "#4e79a7",
    "base_model": "#b07aa1",
    "missing": "#e15759",
}
MAX_RAW_PER_SNAPSHOT = 5  # a corpus can have thousands of files; the graph shows a few
NODE_W, NODE_H, COL_GAP, ROW_GAP = 200, 36, 64, 12
KIND_ORDER = ["raw", "feedback", "snapshot", "base_model", "missing", "version"]


@dataclass
class Graph:
    """Nodes by key (kind, label, sub-label, tooltip) and edges in the direction data flows."""

    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: set[tuple[str, str]] = field(default_factory=set)


def lineage_graph(walks: list[list[dict[str, Any]]]) -> Graph:
    """Merge the depth-first lineage walks of several versions into one graph. A node's
    parent is the last node one level up; raw files and sources are leaves under snapshots."""
    g = Graph()
    leaves: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # snapshot -> leaf nodes
    for walk in walks:
        stack: list[str] = []
        for n in walk:
            parent = stack[n["depth"] - 1] if n["depth"] else None
            key = f"{n['kind']}:{n['id']}:{n['detail'] if n['kind'] == 'raw' else ''}"
            stack = [*stack[: n["depth"]], key]
            if n["kind"] in ("raw", "source") and parent:
                leaves[parent][key] = n
                continue
            g.nodes[key] = _node_text(n)
            if parent:
                g.edges.add((key, parent))
    for snap, nodes in leaves.items():
        _add_raw(g, snap, {k: n for k, n in sorted(nodes.items()) if n["kind"] == "raw"})
        sources = sorted(n["id"] for n in nodes.values() if n["kind"] == "source")
        if sources:
            _add_sources(g, snap, sources)
    return g


def _node_text(n: dict[str, Any]) -> dict[str, str]:
    kind, ident, detail = n["kind"], str(n["id"]), str(n["detail"])
    label, sub = {
        "version": (ident, detail.split(",")[0]),
        "snapshot": (ident[:16], detail.split(", from")[0]),
        "raw": (ident.rsplit("/", 1)[-1], detail.split(",")[0]),
        "base_model": (ident.rstrip("/").rsplit("/", 1)[-1], "base model"),
    }.get(kind, (ident, kind))
    return {"kind": kind, "label": label, "sub": sub, "tip": f"{kind} {ident}\n{detail}"}


def _add_raw(g: Graph, snap: str, raw: dict[str, dict[str, Any]]) -> None:
    shown = list(raw)[:MAX_RAW_PER_SNAPSHOT]
    for key in shown:
        g.nodes[key] = _node_text(raw[key])
        g.edges.add((key, snap))
    rest = [n["id"] for k, n in raw.items() if k not in shown]
    if rest:
        more = f"raw-more:{snap}"
        g.nodes[more] = {
            "kind": "raw",
            "label": f"+{len(rest):,} more raw files",
            "sub": "",
            "tip": "\n".join(rest[:50]),
        }
        g.edges.add((more, snap))


def _add_sources(g: Graph, snap: str, ids: list[str]) -> None:
    """Feedback events become one node per snapshot: thousands of ids would hide the graph."""
    logs = [i for i in ids if i.startswith("feedback-events:")]
    events = len(ids) - len(logs)
    g.nodes[f"feedback:{snap}"] = {
        "kind": "feedback",
        "label": f"{events:,} feedback events" if logs else f"{len(ids):,} sources",
        "sub": "served, rated, corrected" if logs else "",
        "tip": "\n".join(logs or ids[:50]),
    }
    g.edges.add((f"feedback:{snap}", snap))


def layout(g: Graph) -> dict[str, tuple[int, float]]:
    """Column and row of every node: versions as far left as their inputs allow, everything
    else just left of what it feeds; rows ordered by where their successors sit."""
    preds, succs = defaultdict(set), defaultdict(set)
    for a, b in g.edges:
        succs[a].add(b)
        preds[b].add(a)
    order = _topological(list(g.nodes), preds, succs)
    col: dict[str, int] = {}
    for k in order:
        col[k] = 1 + max((col[p] for p in preds[k] if p in col), default=-1)
    for k in reversed(order):
        if g.nodes[k]["kind"] != "version" and succs[k]:
            col[k] = min(col[s] for s in succs[k]) - 1
    row: dict[str, float] = {}
    for c in sorted(set(col.values()), reverse=True):
        members = [k for k in g.nodes if col[k] == c]
        members.sort(key=lambda k: (_barycentre(k, succs, row), *_rank(g, k)))
        for i, k in enumerate(members):
            row[k] = i
    return {k: (col[k], row[k]) for k in g.nodes}


def _topological(keys: list[str], preds: dict, succs: dict) -> list[str]:
    waiting = {k: len(preds[k]) for k in keys}
    ready = sorted(k for k in keys if not waiting[k])
    out = []
    while ready:
        k = ready.pop()
        out.append(k)
        for s in succs[k]:
            waiting[s] -= 1
            if not waiting[s]:
                ready.append(s)
    done = set(out)
    return out + [k for k in keys if k not in done]  # a cycle would be a registry bug


def _rank(g: Graph, key: str) -> tuple[int, bool, tuple[str, int]]:
    """Within a column and at equal barycentre: by kind, summaries last, then by name."""
    return KIND_ORDER.index(g.nodes[key]["kind"]), key.startswith("raw-more"), natural(key)


def _barycentre(key: str, succs: dict, row: dict[str, float]) -> float:
    rows = [row[s] for s in succs[key] if s in row]
    return sum(rows) / len(rows) if rows else -1.0


def lineage_svg(g: Graph) -> Markup:
    """The graph as one SVG: columns of nodes, curved edges into what they feed, a legend."""
    pos = layout(g)
    per_col: dict[int, int] = defaultdict(int)
    for c, _ in pos.values():
        per_col[c] += 1
    tallest = max(per_col.values())

    def xy(k: str) -> tuple[float, float]:
        c, r = pos[k]
        offset = (tallest - per_col[c]) * (NODE_H + ROW_GAP) / 2
        return 24 + c * (NODE_W + COL_GAP), 60 + offset + r * (NODE_H + ROW_GAP)

    kinds = {n["kind"] for n in g.nodes.values()}
    legend, x = [], 12
    for kind, color in KIND_COLORS.items():
        if kind in kinds:
            legend.append({"x": x, "color": color, "label": kind.replace("_", " ")})
            x += 36 + 7 * len(legend[-1]["label"])
    return render(
        "lineage.svg",
        title="Lineage: raw data and feedback → snapshots → versions",
        width=24 + (max(c for c, _ in pos.values()) + 1) * (NODE_W + COL_GAP) - COL_GAP + 24,
        height=60 + tallest * (NODE_H + ROW_GAP) + 10,
        legend=legend,
        edges=[_edge(xy(a), xy(b)) for a, b in sorted(g.edges)],
        nodes=[_node(*xy(k), n) for k, n in g.nodes.items()],
        node_w=NODE_W,
        node_h=NODE_H,
    )


def _edge(a: tuple[float, float], b: tuple[float, float]) -> str:
    """An edge's path: from the right of one node to the left of the next, as an S curve."""
    x1, y1, x2, y2 = a[0] + NODE_W, a[1] + NODE_H / 2, b[0], b[1] + NODE_H / 2
    mid = (x1 + x2) / 2
    return f"M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2 - 1:.0f},{y2:.0f}"


def _node(x: float, y: float, n: dict[str, str]) -> dict[str, Any]:
    return {
        "x": round(x),
        "y": round(y),
        "color": KIND_COLORS.get(n["kind"], "#777"),
        "label": n["label"] if len(n["label"]) <= 27 else n["label"][:26] + "…",
        "sub": n["sub"] if len(n["sub"]) <= 32 else n["sub"][:31] + "…",
        "tip": n["tip"],
    }
