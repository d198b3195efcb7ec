"""What a section of the page is made of: notes, rows of plots, tables and the lineage graph.

Sections build these from the sources; ``templates/page.html`` renders them, escaping every
string. Only the SVGs, made by Matplotlib or the lineage template, arrive as ``Markup``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from markupsafe import Markup

from report.numbers import fmt


@dataclass
class Note:
    """A line of text in place of what has no data, or explaining what is shown."""

    text: str
    kind: ClassVar[str] = "note"


@dataclass
class Plots:
    """Charts side by side; a chart without data is a note in its place."""

    items: list[Markup | Note]
    kind: ClassVar[str] = "plots"


@dataclass
class Cell:
    text: str
    numeric: bool = False


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    kind: ClassVar[str] = "table"

    @classmethod
    def of(cls, headers: list[str], rows: list[list[Any]]) -> Table:
        """A table from plain values: numbers right-aligned, None as a dash, booleans lower."""
        return cls(headers, [[cell(value) for value in row] for row in rows])


@dataclass
class Graph:
    """A wide SVG that scrolls sideways instead of shrinking."""

    svg: Markup
    kind: ClassVar[str] = "graph"


@dataclass
class Details:
    """A collapsed block: a summary line that opens onto preformatted text (a model card)."""

    summary: str
    text: str
    kind: ClassVar[str] = "details"


Block = Note | Plots | Table | Graph | Details


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block]


def cell(value: Any) -> Cell:
    if isinstance(value, bool) or value is None:
        return Cell("—" if value is None else str(value).lower())
    if isinstance(value, int | float):
        return Cell(fmt(value), numeric=True)
    return Cell(str(value))
