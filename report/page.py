"""The operator's report: one self-contained HTML page about a model's flywheel.

Training curves, evaluations against the parent, feedback over time, drift, serving latency
and lineage, drawn as inline SVG: the page needs no network, CDN or script, so it can be
mailed, archived next to a release or opened on an air-gapped cluster. Every source is
optional; a missing one gives a "no data" note instead of an error.

The sources are read by ``report.sources``, turned into sections by ``report.sections``
(charts by ``report.charts``, the lineage graph by ``report.lineage``) and rendered here
with the Jinja2 template ``templates/page.html``, which escapes every string.
"""

from __future__ import annotations

from datetime import UTC, datetime

from core import storage
from report.render import render
from report.sections import sections
from report.sources import gather
from schemas.storage import StorageSettings


def build_report(
    registry_uri: str,
    event_log_uri: str,
    loop_uri: str | None,
    model: str | None = None,
    settings: StorageSettings | None = None,
) -> str:
    """The whole report as one HTML document (inline CSS and SVG, nothing to fetch)."""
    src = gather(registry_uri, event_log_uri, loop_uri, model, settings)
    return str(
        render(
            "page.html",
            title=f"Flywheel report: {src.model or 'no model yet'}",
            model=src.model or "",
            aliases=sorted(src.aliases.items()),
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            sources={"registry": registry_uri, "events": event_log_uri, "loop": loop_uri or "none"},
            others=src.others,
            problems=src.problems,
            sections=sections(src),
        )
    )


def write_report(path_or_uri: str, html: str, settings: StorageSettings | None = None) -> str:
    """Write the page to a local path or ``s3://`` uri; returns where it went."""
    loc = storage.resolve(path_or_uri, settings)
    storage.write_text(loc, html)
    return loc.uri
