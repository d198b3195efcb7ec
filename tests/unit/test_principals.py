"""Principals without Serve: API keys with ids, pseudonyms, response ids bound to a key,
rate limits and the bounded caches."""

from __future__ import annotations

import pytest

from schemas.serving import ApiKey, GatewaySettings, RateLimits
from serve_apps.principals import (
    LRU,
    KeyRing,
    Pseudonyms,
    RateLimiter,
    ResponseIds,
    parse_key,
    principal,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_keys_carry_ids_from_config_and_environment() -> None:
    settings = GatewaySettings(
        api_keys=[ApiKey(id="app", key="app-secret-1", trust_user_ids=True), "bare-secret-1"]
    )
    ring = KeyRing(settings, {"FLYWHEEL_API_KEYS": "ops:ops-secret-1, ,"})
    assert ring.find("app-secret-1").id == "app"
    assert ring.find("ops-secret-1").id == "ops"
    bare = ring.find("bare-secret-1")
    assert bare.id.startswith("key-") and "bare" not in bare.id  # no part of the secret
    assert ring.find("") is None and ring.find("nope-nope") is None
    assert parse_key("x:" + "y" * 8) == ApiKey(id="x", key="y" * 8)
    with pytest.raises(ValueError, match="no API keys"):
        KeyRing(GatewaySettings(), {})
    with pytest.raises(ValueError, match="unique"):
        KeyRing(GatewaySettings(api_keys=["a:secret-one", "a:secret-two"]), {})


def test_pseudonyms_are_keyed_stable_and_scoped() -> None:
    p, other = Pseudonyms(b"one"), Pseudonyms(b"two")
    alice = p("user", "alice@example.com", "app")
    assert alice == p("user", "alice@example.com", "app") and alice.startswith("u-")
    assert "alice" not in alice and alice != other("user", "alice@example.com", "app")
    assert alice != p("user", "alice@example.com", "ops")  # another key's alice
    assert p("session", "s1", "app").startswith("s-") and p("user", None) is None
    # Without its own secret the derived one is stable and depends on the keys.
    settings = GatewaySettings(api_keys=["a:secret-one"])
    ring = KeyRing(settings, {})
    assert ring.secret() == KeyRing(settings, {}).secret()
    assert ring.secret() != KeyRing(GatewaySettings(api_keys=["a:secret-two"]), {}).secret()
    own = KeyRing(settings, {"FLYWHEEL_PSEUDONYM_KEY": "s3cret"}).secret()
    assert own == b"s3cret"


def test_principal_is_the_key_unless_it_is_trusted_to_name_users() -> None:
    plain = ApiKey(id="k", key="secret-k-1")
    trusted = ApiKey(id="app", key="secret-a-1", trust_user_ids=True)
    assert principal(plain, "u-1") == principal(plain, "u-2") == "k"
    assert principal(trusted, "u-1") == "app/u-1" and principal(trusted, None) == "app"


def test_response_ids_are_bound_to_their_key_and_window() -> None:
    clock = Clock()
    ids = ResponseIds(b"secret", clock)
    rid = ids.issue("chatcmpl-", "alice")
    assert rid.startswith("chatcmpl-") and len(rid) == len("chatcmpl-") + 40
    assert ids.check(rid, "alice", window_s=60) is None
    assert "another API key" in ids.check(rid, "mallory", window_s=60)
    forged = rid[:-1] + ("0" if rid[-1] != "0" else "1")
    assert "unknown" in ids.check(forged, "alice", window_s=60)
    for junk in ("r-1", "chatcmpl-" + "0" * 40, "x" * 128, "é" * 50, ""):
        assert "unknown" in ids.check(junk, "alice", window_s=60)
    assert ResponseIds(b"other", clock).check(rid, "alice", window_s=60) is not None
    clock.now += 61
    assert "window closed" in ids.check(rid, "alice", window_s=60)


def test_rate_limiter_refills_and_says_when() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimits(burst_s=3, max_tracked=2), clock)
    # 60 a minute, 3 s of burst: 3 at once, then one a second.
    assert [limiter.take("k", 60) for _ in range(3)] == [None, None, None]
    wait = limiter.take("k", 60)
    assert wait == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.take("k", 60) is None
    assert limiter.take("other", 60) is None  # buckets are per name
    limiter.take("third", 60)
    assert len(limiter) == 2  # the longest idle was forgotten


def test_lru_keeps_the_most_recently_used() -> None:
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert lru.get("b") is None and lru.get("a") == 1 and len(lru) == 2
