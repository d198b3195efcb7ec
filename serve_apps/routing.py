"""Which model version answers a request: pure, so it is unit-tested without Serve.

A request names ``name:3`` (that version), ``name@canary`` (that alias) or ``name``: then
the traffic split (alias -> weight, from the registry) decides. A user id makes the choice
sticky: the same user lands in the same bucket for as long as the weights stay put. Only a
version the split chose is marked ``split``: a client that names ``name@canary`` itself
is served, but its traffic says nothing about how the canary does with users.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from core.registry import ModelRegistry, RegistryError, parse_ref
from serve_apps.principals import LRU


@dataclass(frozen=True)
class Route:
    """The chosen version and why."""

    version: str  # "name:3"
    model: str  # "name"
    route: str  # alias name, "explicit" or "latest"
    split: bool = False  # the traffic split chose it


def bucket(user: str, model: str) -> float:
    """A stable number in [0, 100) for a user and model."""
    digest = hashlib.sha256(f"{model}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def pick_alias(weights: dict[str, float], point: float) -> str:
    """The alias whose cumulative share of 100 covers ``point``."""
    total = sum(weights.values())
    cumulative = 0.0
    for alias in sorted(weights):
        cumulative += weights[alias] / total * 100
        if point < cumulative:
            return alias
    return sorted(weights)[-1]


class Router:
    """Resolves requested models against the registry, caching aliases and weights briefly
    so an alias move or a new split takes effect within ``ttl_s`` without a restart.

    While the registry cannot be read (object storage down), the last answer is served
    however old (stale on error); an explicit version, immutable, is looked up once."""

    def __init__(self, registry: ModelRegistry, ttl_s: float = 1.0, max_models: int = 256) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        # Names come from clients: the cache keeps the most recent few, whatever they send.
        self._cache: LRU[tuple[str, str], tuple[float, Any]] = LRU(3 * max_models)
        self._lock = threading.Lock()
        self._rng = random.Random()

    def resolve(self, requested: str, user: str | None = None) -> Route:
        name, version, alias = parse_ref(requested)
        if version is not None:
            ref = f"{name}:{version}"
            self._cached(("version", ref), lambda: self.registry.get(ref), forever=True)
            return Route(ref, name, "explicit")
        aliases = self._cached(("aliases", name), lambda: self.registry.aliases(name))
        if alias is None:
            weights = self._cached(("routing", name), lambda: self.registry.routing(name))
            live = {a: w for a, w in weights["weights"].items() if a in aliases and w > 0}
            if not live:
                latest = self._cached(("latest", name), lambda: self.registry.get(name).ref)
                return Route(latest, name, "latest")
            point = bucket(user, name) if user else self._rng.random() * 100
            chosen = pick_alias(live, point)
            return Route(f"{name}:{aliases[chosen]}", name, chosen, split=True)
        if alias not in aliases:
            raise RegistryError(f"{name} has no alias {alias!r}")
        return Route(f"{name}:{aliases[alias]}", name, alias)

    def __len__(self) -> int:
        return len(self._cache)

    def _cached(self, key: tuple[str, str], load: Any, forever: bool = False) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit and (forever or now - hit[0] < self.ttl_s):
                return hit[1]
        try:
            value = load()
        except RegistryError:
            raise  # an answer: no such model or alias
        except Exception:
            if hit is None:
                raise
            return hit[1]  # the registry is unreachable: the last answer stands
        with self._lock:
            self._cache.put(key, (now, value))
        return value
