"""Routing by prompt prefix (serve_apps/prefix_router.py), without a cluster: keys follow token
prefixes and keep versions apart; a request that shares a long prefix with an earlier one goes
to the replica that served it, among the replicas that have its version, unless that replica
is busy; other calls take Serve's default routing. Replicas are Serve's own test stand-ins and
the prefix tree runs in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import ray
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import PrefixTree
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.test_utils import FakeRunningReplica

from schemas.serving import GeneratorSettings
from serve_apps.generator import generator_deployment
from serve_apps.prefix_router import SEPARATOR, PrefixAffinityRouter, prompt_key

SYSTEM = list(range(100, 400))  # a shared system prompt of 300 tokens
HEAD = len("demo:1" + SEPARATOR)


class _Done:
    """What a finished ``.remote()`` call gives: awaitable, and what ``ray.get`` unwraps here."""

    def __init__(self, value: Any, name: str) -> None:
        self.value, self.name = value, name

    def __await__(self):
        return self.value
        yield  # a generator: what __await__ must return


class FakeTree:
    """The prefix tree actor in-process: each ``.method.remote(...)`` runs at once."""

    def __init__(self) -> None:
        self.tree = PrefixTree()
        self.calls: list[str] = []
        self.waited: list[str] = []  # the calls ray.get blocked on

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.tree, name)
        if name == "start_eviction_loop":  # no background thread in a unit test
            method = lambda *a: True  # noqa: E731

        def remote(*args: Any) -> _Done:
            self.calls.append(name)
            return _Done(method(*args), name)

        return type("Method", (), {"remote": staticmethod(remote)})


def _request(model_id: str, prompt_ids: list[int] | None) -> PendingRequest:
    payload: dict[str, Any] = {"max_tokens": 8}
    if prompt_ids is not None:
        payload["prompt_ids"] = prompt_ids
    meta = RequestMetadata(request_id="r", internal_request_id="r", multiplexed_model_id=model_id)
    return PendingRequest(args=[payload], kwargs={}, metadata=meta)


def _replica(name: str, *models: str) -> FakeRunningReplica:
    replica = FakeRunningReplica(name, model_ids=set(models))
    replica.set_queue_len_response(0)
    return replica


Scenario = Callable[[PrefixAffinityRouter, FakeTree], Awaitable[None]]


def _run(monkeypatch: pytest.MonkeyPatch, replicas: list[FakeRunningReplica], go: Scenario) -> None:
    """Run ``go`` with a router over ``replicas`` on an event loop, as Serve's router has one."""
    tree = FakeTree()

    def get(ref: _Done) -> Any:  # the parent's calls to the tree
        tree.waited.append(ref.name)
        return ref.value

    monkeypatch.setattr(ray, "get", get)

    async def main() -> None:
        router = PrefixAffinityRouter(
            deployment_id=DeploymentID(name="Generator", app_name="flywheel"),
            handle_source=DeploymentHandleSource.UNKNOWN,
            use_replica_queue_len_cache=True,
        )
        router.initialize_state(max_extra_requests=4, tree_actor=tree)
        router.update_replicas(replicas)
        await go(router, tree)

    asyncio.run(main())


async def _ranks(router: PrefixAffinityRouter, request: PendingRequest) -> list[list[str]]:
    ranks = await router.choose_replicas(router._replicas_list, request)
    return [[r.replica_id.unique_id for r in rank] for rank in ranks]


async def _route(router: PrefixAffinityRouter, request: PendingRequest) -> str:
    """Where Serve would send ``request`` with every queue empty: the first replica of the
    first rank that has one. Records it in the tree, as Serve's callback does."""
    ranks = await router.choose_replicas(router._replicas_list, request)
    replica = next(r for rank in ranks for r in rank)
    router.on_request_routed(request, replica.replica_id, None)
    return replica.replica_id.unique_id


def _shared(a: str, b: str) -> int:
    """How many characters two keys share from the start."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _full_id(router: PrefixAffinityRouter, name: str) -> str:
    return next(i.to_full_id_str() for i in router._replica_id_set if i.unique_id == name)


def test_keys_share_exactly_the_shared_tokens() -> None:
    a = prompt_key("demo:1", [*SYSTEM, 7, 8])
    b = prompt_key("demo:1", [*SYSTEM, 7, 9])
    assert len(a) == HEAD + len(SYSTEM) + 2  # one character per token
    assert _shared(a, b) == HEAD + len(SYSTEM) + 1
    assert prompt_key("demo:1", [0, 5]) != prompt_key("demo:1", [5, 0])
    edge = prompt_key("demo:1", [0, 0xD800, 0xFFFFF])  # 0xD800: a surrogate if unshifted
    assert edge.encode("utf-8")  # raises on a surrogate


def test_keys_keep_versions_apart() -> None:
    ids = [*SYSTEM, 7]
    for other in ("demo:2", "demo:10", "demo:1x", ""):
        shared = _shared(prompt_key("demo:1", ids), prompt_key(other, ids))
        assert shared < HEAD, other  # not even the first token is shared


def test_a_shared_prefix_goes_to_the_replica_that_saw_it(monkeypatch: pytest.MonkeyPatch) -> None:
    async def go(router: PrefixAffinityRouter, tree: FakeTree) -> None:
        for question in range(6):  # each system prompt first seen with question 0
            system = [t + 1000 * question for t in SYSTEM]
            first = await _route(router, _request("demo:1", [*system, 1, 2]))
            ranks = await _ranks(router, _request("demo:1", [*system, 3, 4, 5]))
            assert ranks[0] == [first]
        # A prompt no replica was sent is not pinned: load chooses between both.
        ranks = await _ranks(router, _request("demo:1", list(range(9000, 9300))))
        assert ranks[0] == [] and sorted(ranks[1]) == ["a", "b"]
        assert "insert" in tree.calls and "insert" not in tree.waited  # routing never waits

    _run(monkeypatch, [_replica("a", "demo:1"), _replica("b", "demo:1")], go)


def test_a_prompt_seen_under_another_version_does_not_pull(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def go(router: PrefixAffinityRouter, tree: FakeTree) -> None:
        await _route(router, _request("demo:1", [*SYSTEM, 1]))
        ranks = await _ranks(router, _request("demo:2", [*SYSTEM, 1]))
        assert ranks[0] == []  # no cache to hit: vLLM keys its blocks by adapter too

    _run(monkeypatch, [_replica("a", "demo:1", "demo:2"), _replica("b", "demo:1", "demo:2")], go)


def test_the_version_comes_before_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """``b`` was sent this prompt under demo:1 and has evicted demo:1 since; ``a`` has it
    loaded. Serve's multiplexing sends the request to ``a``; the parent router asks for the
    tier twice and would offer ``b`` (the replica with the fewest versions)."""

    async def go(router: PrefixAffinityRouter, tree: FakeTree) -> None:
        prompt = [*SYSTEM, 1]
        tree.tree.insert(prompt_key("demo:1", prompt), _full_id(router, "b"), time.time())
        ranks = await _ranks(router, _request("demo:1", prompt))
        assert {r for rank in ranks for r in rank} == {"a"}

    _run(monkeypatch, [_replica("a", "demo:1", "demo:2"), _replica("b")], go)


def test_a_busy_replica_loses_its_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    async def go(router: PrefixAffinityRouter, tree: FakeTree) -> None:
        first = await _route(router, _request("demo:1", [*SYSTEM, 1]))
        other = "b" if first == "a" else "a"
        ids = {i.unique_id: i for i in router._replica_id_set}
        cache = router._replica_queue_len_cache
        cache.update(ids[other], 0)
        cache.update(ids[first], 4)  # max_extra_requests beyond the least busy: still its own
        assert (await _ranks(router, _request("demo:1", [*SYSTEM, 2])))[0] == [first]
        cache.update(ids[first], 5)
        ranks = await _ranks(router, _request("demo:1", [*SYSTEM, 2]))
        assert ranks[0] == [] and other in ranks[1]

    _run(monkeypatch, [_replica("a", "demo:1"), _replica("b", "demo:1")], go)


def test_other_calls_take_the_default_routing(monkeypatch: pytest.MonkeyPatch) -> None:
    async def go(router: PrefixAffinityRouter, tree: FakeTree) -> None:
        for request in (_request("demo:1", None), _request("demo:1", [])):
            assert router._extract_text_from_request(request) is None
            ranks = await _ranks(router, request)
            assert len(ranks) == 1 and sorted(ranks[0]) == ["a", "b"]  # power of two choices
            router.on_request_routed(request, next(iter(router._replica_id_set)), None)
        assert "prefix_match" not in tree.calls and "insert" not in tree.calls

    _run(monkeypatch, [_replica("a", "demo:1"), _replica("b", "demo:1")], go)


def test_the_deployment_routes_by_prefix_where_it_can_hit() -> None:
    vllm = GeneratorSettings(
        engine="vllm", routing="auto", autoscaling={"target_ongoing_requests": 8}
    )
    config = generator_deployment(vllm)._deployment_config.request_router_config
    assert config.request_router_class == "serve_apps.prefix_router.PrefixAffinityRouter"
    assert config.request_router_kwargs["max_extra_requests"] == 8  # None: the autoscaling target
    assert issubclass(config.get_request_router_class(), PrefixAffinityRouter.__mro__[1])
    for settings in (
        GeneratorSettings(engine="hf", routing="auto"),  # no KV cache across requests
        GeneratorSettings(engine="vllm", routing="auto", vllm={"enable_prefix_caching": False}),
        GeneratorSettings(engine="vllm"),  # the default: Serve's power of two
    ):
        deployment = generator_deployment(settings)
        assert deployment._deployment_config.request_router_config.is_default_request_router()
    with pytest.raises(ValueError, match="prefix_affinity needs engine: vllm"):
        GeneratorSettings(engine="hf", routing="prefix_affinity")
