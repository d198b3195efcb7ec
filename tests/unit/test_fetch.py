"""The serving cache: concurrent fetches of one version never expose a half-copied folder."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core.generation import loading
from core.registry import ModelRegistry


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    monkeypatch.setattr(loading, "cache_dir", lambda: tmp_path / "cache")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"part-{i:02d}.bin").write_bytes(bytes([i]) * 200_000)
    reg = ModelRegistry(str(tmp_path / "registry"), actor="t")
    reg.register("m", src)
    return reg


def test_concurrent_fetches_see_whole_folders(registry: ModelRegistry) -> None:
    seen: list[list[int]] = []
    errors: list[BaseException] = []

    def fetch_and_read() -> None:
        try:
            folder = loading.fetch(registry, "m:1")
            seen.append(sorted(len(p.read_bytes()) for p in folder.glob("part-*.bin")))
        except BaseException as e:  # surfaced below, with the others
            errors.append(e)

    threads = [threading.Thread(target=fetch_and_read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert seen == [[200_000] * 20] * 6
    cache = loading.cache_dir()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_an_incomplete_copy_is_replaced(registry: ModelRegistry) -> None:
    folder = loading.fetch(registry, "m:1")
    (folder / ".complete").unlink()
    (folder / "part-00.bin").write_bytes(b"torn")
    again = loading.fetch(registry, "m:1")
    assert again == folder and (again / "part-00.bin").stat().st_size == 200_000
