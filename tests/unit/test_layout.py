"""The rooms of the repository keep their boundaries (DESIGN.md's layout table).

Imports only run downwards: ``schemas`` < ``core`` < ``jobs`` / ``actors`` / ``serve_apps``
< ``cli`` / ``demo`` / ``report`` / ``bench``. ``core`` never imports Ray, so its building blocks
stay unit-testable without a cluster. Files in the runtime rooms stay short enough to read.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RANK = {"schemas": 0, "core": 1, "jobs": 2, "actors": 2, "serve_apps": 2}
# The runtime rooms do not import one another, with one exception: the gateway holds a handle
# to the event-writer actor it starts. Actors submit jobs by entrypoint, never by import.
SIDEWAYS_ALLOWED = {("serve_apps", "actors")}
HIGH_ROOMS = {"cli", "demo", "report", "bench", "tests"}
MAX_LINES = 410  # "about 400": a file past it holds more than one responsibility


def _python_files(room: str) -> list[Path]:
    return sorted((ROOT / room).rglob("*.py"))


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("room", sorted(RANK))
def test_imports_only_run_downwards(room: str) -> None:
    problems = []
    for path in _python_files(room):
        for target in _imported_roots(path):
            if target in HIGH_ROOMS:
                problems.append(f"{path.relative_to(ROOT)} imports {target}")
            elif target in RANK and target != room:
                upward = RANK[target] > RANK[room]
                sideways = RANK[target] == RANK[room] and (room, target) not in SIDEWAYS_ALLOWED
                if upward or sideways:
                    problems.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not problems, "\n".join(problems)


def test_core_is_ray_free() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in _python_files("core") if "ray" in _imported_roots(p)
    ]
    assert not offenders, f"core/ must not import Ray: {offenders}"


@pytest.mark.parametrize("room", ["core", "actors", "serve_apps", "jobs"])
def test_files_stay_readable(room: str) -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _python_files(room)
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by responsibility (over {MAX_LINES} lines): {long}"
