"""Who is calling, and how much they may: pure, so it is unit-tested without Serve.

- :class:`KeyRing` checks a bearer token against every key (constant time) and returns the
  key's :class:`~schemas.serving.ApiKey`; events carry its id, never the secret.
- :class:`Pseudonyms` turns user and session ids into keyed hashes (HMAC-SHA256) before they
  reach any event, state, snapshot or report. The same id under the same key always gives
  the same pseudonym, so floods and votes still count per user.
- :class:`ResponseIds` issues response ids that carry their issue time and a tag binding them
  to the key they were served to: feedback on an id needs that key (the "key check"), and an
  id the gateway never issued, or one past the feedback window, is refused without any state.
- :class:`RateLimiter` keeps token buckets per key and per user, at most ``max_tracked``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from schemas.serving import ApiKey, GatewaySettings, RateLimits

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A dict that keeps its ``capacity`` most recently used entries."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def parse_key(entry: ApiKey | str) -> ApiKey:
    """``id:secret``, a bare ``secret`` (id from its hash) or an :class:`ApiKey` as is."""
    if isinstance(entry, ApiKey):
        return entry
    entry = entry.strip()
    name, sep, secret = entry.partition(":")
    if sep and name and secret:
        return ApiKey(id=name, key=secret)
    digest = hashlib.sha256(entry.encode()).hexdigest()[:8]
    return ApiKey(id=f"key-{digest}", key=entry)


class KeyRing:
    """The gateway's API keys, from config and from the environment variable it names."""

    def __init__(self, settings: GatewaySettings, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._pseudonym_secret = env.get(settings.pseudonym_key_env, "").strip()
        raw = [*settings.api_keys, *env.get(settings.api_keys_env, "").split(",")]
        keys = [parse_key(k) for k in raw if not isinstance(k, str) or k.strip()]
        if not keys:
            raise ValueError(
                f"no API keys: set {settings.api_keys_env}=id:secret,... (or gateway.api_keys)"
            )
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise ValueError(f"API key ids must be unique: {sorted(ids)}")
        self.keys = keys

    def find(self, token: str) -> ApiKey | None:
        """The key ``token`` is, or None; compares against every key, always."""
        found = None
        for key in self.keys:
            if hmac.compare_digest(token.encode(), key.key.encode()):
                found = key
        return found if token else None

    def secret(self) -> bytes:
        """The pseudonym and response-id secret: its own variable, else derived from the keys
        (stable while the keys are; set the variable so rotating a key keeps pseudonyms)."""
        if self._pseudonym_secret:
            return self._pseudonym_secret.encode()
        joined = "\0".join(sorted(k.key for k in self.keys))
        return hashlib.sha256(b"flywheel-pseudonyms\0" + joined.encode()).digest()


class Pseudonyms:
    """Keyed hashes of identifiers: stable, not reversible without the secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def __call__(self, kind: str, value: str | None, scope: str = "") -> str | None:
        """``u-`` + 16 hex digits for a user (``s-`` for a session); None stays None.
        ``scope`` (the key id) keeps two keys' users of the same name apart."""
        if value is None:
            return None
        msg = f"{kind}\0{scope}\0{value}".encode()
        return f"{kind[0]}-" + hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:16]


def principal(key: ApiKey, user: str | None) -> str:
    """Who a request counts as: the key, or the key's (pseudonymous) user if it is trusted
    to name its users."""
    if key.trust_user_ids and user:
        return f"{key.id}/{user}"
    return key.id


class ResponseIds:
    """``<prefix><8 hex issue time><16 hex random><16 hex tag>``; the tag is an HMAC of the
    rest and the key id, so only the gateway makes valid ids, each good for one key."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self._secret = hashlib.sha256(b"flywheel-response-ids\0" + secret).digest()
        self.clock = clock

    def issue(self, prefix: str, key_id: str) -> str:
        body = f"{int(self.clock()):08x}{secrets.token_hex(8)}"
        return prefix + body + self._tag(body, key_id)

    def check(self, response_id: str, key_id: str, window_s: float) -> str | None:
        """None if ``key_id`` may rate ``response_id`` now, else why not."""
        body, tag = response_id.rpartition("-")[2][:-16], response_id[-16:]
        if len(body) != 24 or not hmac.compare_digest(
            tag.encode(), self._tag(body, key_id).encode()
        ):
            return "unknown response id (or one served to another API key)"
        try:
            issued = int(body[:8], 16)
        except ValueError:
            return "unknown response id (or one served to another API key)"
        if self.clock() - issued > window_s:
            return f"feedback window closed: responses take feedback for {window_s:.0f} s"
        return None

    def _tag(self, body: str, key_id: str) -> str:
        msg = f"{body}\0{key_id}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:16]


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets: ``take(name, per_minute)`` spends one token or says how long to wait."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._buckets: LRU[str, _Bucket] = LRU(limits.max_tracked)

    def take(self, name: str, per_minute: float) -> float | None:
        """None if allowed (a token spent), else the seconds until one is available."""
        rate = per_minute / 60
        capacity = max(1.0, rate * self.limits.burst_s)
        now = self.clock()
        bucket = self._buckets.get(name) or _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        self._buckets.put(name, bucket)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return (1 - bucket.tokens) / rate

    def __len__(self) -> int:
        return len(self._buckets)
