"""The Jinja2 environment of the report's templates (``report/templates/``).

Autoescaping is on for every template, whatever its name: every string from the registry,
the events or the loop state is escaped unless it is ``Markup`` (the SVGs the charts make).
Undefined names fail loudly instead of rendering as empty text.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

ENV = Environment(
    loader=PackageLoader("report", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def render(template: str, **context: Any) -> Markup:
    """A template rendered with ``context``, as markup that later templates do not escape."""
    return Markup(ENV.get_template(template).render(**context))
