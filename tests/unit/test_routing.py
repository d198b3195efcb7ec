"""Routing requests to versions: explicit refs, aliases, weighted and sticky splits."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from core.registry import ModelRegistry, RegistryError
from serve_apps.routing import Router, bucket, pick_alias


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    reg = ModelRegistry(str(tmp_path / "r"), actor="t")
    for tag in "abc":
        src = tmp_path / tag
        src.mkdir()
        (src / "config.json").write_text(tag)
        reg.register("m", src)
    return reg


def test_pick_alias_and_bucket() -> None:
    weights = {"canary": 10, "production": 90}
    assert pick_alias(weights, 5) == "canary" and pick_alias(weights, 50) == "production"
    assert pick_alias(weights, 99.99) == "production"
    assert bucket("alice", "m") == bucket("alice", "m") != bucket("bob", "m")
    shares = collections.Counter(pick_alias(weights, bucket(f"u{i}", "m")) for i in range(5000))
    assert 400 <= shares["canary"] <= 600


def test_router_resolution(registry: ModelRegistry) -> None:
    router = Router(registry, ttl_s=0)
    assert router.resolve("m:2").version == "m:2"
    assert router.resolve("m").route == "latest" and router.resolve("m").version == "m:3"
    registry.set_alias("m", "production", 1)
    registry.set_alias("m", "canary", 3)
    assert router.resolve("m").version == "m:1"  # default routing: all to production
    registry.set_routing("m", {"production": 50, "canary": 50})
    seen = collections.Counter(router.resolve("m", f"user{i}").version for i in range(400))
    assert set(seen) == {"m:1", "m:3"} and 150 < seen["m:3"] < 250
    assert len({router.resolve("m", "alice").version for _ in range(20)}) == 1
    assert router.resolve("m@canary").version == "m:3"
    with pytest.raises(RegistryError):
        router.resolve("m:9")
    with pytest.raises(RegistryError):
        router.resolve("m@staging")


def test_router_cache_expires(registry: ModelRegistry) -> None:
    registry.set_alias("m", "production", 1)
    router = Router(registry, ttl_s=3600)
    assert router.resolve("m@production").version == "m:1"
    registry.set_alias("m", "production", 2)
    assert router.resolve("m@production").version == "m:1"  # cached
    assert Router(registry, ttl_s=0).resolve("m@production").version == "m:2"


def test_routes_stand_while_the_registry_is_unreachable(
    registry: ModelRegistry, monkeypatch
) -> None:
    router = Router(registry, ttl_s=0)  # every lookup goes to the registry while it answers
    split = router.resolve("m", user="alice")
    explicit = router.resolve("m:1")
    calls = {"n": 0}

    def down(*_: object) -> None:
        calls["n"] += 1
        raise OSError("object storage unreachable")

    for method in ("aliases", "routing", "get"):
        monkeypatch.setattr(registry, method, down)
    assert router.resolve("m", user="alice") == split  # stale on error
    before = calls["n"]
    assert router.resolve("m:1") == explicit and calls["n"] == before  # immutable: cached
    with pytest.raises(OSError):
        router.resolve("other@production")  # nothing cached to stand on: the gateway's 503
    with pytest.raises(RegistryError):
        Router(registry).resolve("bad name!")  # still a 404, not an outage
