"""The generator's prefix router (serve_apps.prefix_router) on a live Serve app: requests
sharing a long token prefix land on one replica, while Serve's multiplexing still sends a
version where it is loaded. The replicas are echo deployments that say who they are (no
engine: what is under test is where requests go, not what a model answers)."""

from __future__ import annotations

import asyncio
import collections

import pytest
from ray import serve
from ray.serve.config import RequestRouterConfig

from jobs.runtime import free_port
from serve_apps.prefix_router import PrefixAffinityRouter

pytestmark = pytest.mark.timeout(300)


@serve.deployment(
    num_replicas=2,
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=8,
    request_router_config=RequestRouterConfig(
        request_router_class=PrefixAffinityRouter,
        request_router_kwargs={"match_rate_threshold": 0.1, "max_extra_requests": 8},
    ),
)
class Echo:
    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        return model_id

    async def generate(self, request: dict) -> tuple[str, str]:
        model_id = serve.get_multiplexed_model_id()
        model = await self.get_model(model_id) if model_id else ""
        if not request:  # a burst's request: held long enough for a burst to fill a replica
            await asyncio.sleep(0.05)
        return serve.get_replica_context().replica_id.unique_id, model


@pytest.fixture(scope="module")
def echo(ray_session):
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    handle = serve.run(Echo.bind(), name="prefix-echo", route_prefix=None)
    yield handle
    serve.delete("prefix-echo")
    serve.shutdown()


async def send(handle, model: str, prompts: list[list[int]]) -> list[str]:
    """One at a time, as a chat's turns arrive; the replica of each."""
    out = []
    h = handle.options(multiplexed_model_id=model)
    for ids in prompts:
        replica, served = await h.generate.remote({"prompt_ids": ids, "max_tokens": 1})
        assert served == model
        out.append(replica)
    return out


async def burst(handle, n: int) -> collections.Counter:
    """``n`` requests at once without prompt ids: Serve spreads them by load."""
    results = await asyncio.gather(*(handle.generate.remote({}) for _ in range(n)))
    return collections.Counter(replica for replica, _ in results)


def test_a_shared_prefix_stays_on_one_replica(echo) -> None:
    # Both replicas load m:1 first (a burst past one replica's limit), so multiplexing offers
    # both and only the prefix can keep a conversation on one.
    warm = asyncio.run(burst(echo.options(multiplexed_model_id="m:1"), 24))
    assert len(warm) == 2, warm
    system_a, system_b = list(range(1, 400)), list(range(500, 900))
    seen_a = asyncio.run(send(echo, "m:1", [[*system_a, 1000 + i] for i in range(12)]))
    assert len(set(seen_a)) == 1, seen_a  # by load, 12 in turn would split about evenly
    seen_b = asyncio.run(send(echo, "m:1", [[*system_b, 2000 + i] for i in range(12)]))
    assert len(set(seen_b[1:])) == 1, seen_b


def test_without_prompt_ids_requests_are_spread_by_load(echo) -> None:
    counts = asyncio.run(burst(echo, 40))
    assert len(counts) == 2 and min(counts.values()) >= 5, counts
