"""Serving over real HTTP on the shared local Ray: the official OpenAI client, limits and
errors, canary split, stickiness, explicit versions, alias moves, events, replica loss and
scale to zero. The whole module runs once per engine: Hugging Face and vLLM."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from pathlib import Path

import httpx
import openai
import pytest

from actors.event_writer import writer_name
from core.events import EventLog
from core.registry import ModelRegistry
from jobs.runtime import free_port
from schemas.events import Feedback, ServedOutput
from tests.tinymodel import make_lora_adapter, make_tiny_model

pytestmark = pytest.mark.slow
KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A registry with a tiny base (tiny:1) and a LoRA canary on it (tiny:2)."""
    root = tmp_path_factory.mktemp("serve")
    base = make_tiny_model(root / "base")
    adapter = make_lora_adapter(base, root / "adapter")
    registry = ModelRegistry(str(root / "registry"), actor="test")
    registry.register("tiny", base)
    registry.register("tiny", adapter, format="lora", base="tiny:1")
    registry.set_alias("tiny", "production", 1)
    registry.set_alias("tiny", "canary", 2)
    registry.set_routing("tiny", {"production": 90, "canary": 10})
    # What a model pretrained on a trained tokenizer looks like: no chat template.
    registry.register("plain", make_tiny_model(root / "plain", chat_template=False))
    return {"root": root, "registry": registry}


# vLLM without torch.compile: an engine starts in ~35 s instead of minutes on 2 cores.
ENGINES = {
    "hf": {"engine": "hf"},
    "vllm": {"engine": "vllm", "vllm": {"enforce_eager": True, "max_num_seqs": 16}},
}


def serve_args(world: dict, name: str, engine: str, **generator) -> dict:
    return {
        "registry_uri": str(world["root"] / "registry"),
        "event_log_uri": str(world["root"] / f"events-{name}"),
        "event_wal_dir": str(world["root"] / f"wal-{name}"),
        "default_model": "tiny",
        "generator": {"num_cpus": 0.5, "max_batch_size": 16, **ENGINES[engine], **generator},
        "gateway": {
            "api_keys": [KEY],
            # Limits have their own tests (test_trust); these bursts are not what they are about.
            "rate_limits": {"key_per_minute": 1e6, "user_per_minute": 1e6},
            "max_body_bytes": 20_000,
            "max_prompt_tokens": 200,
            "max_tokens_ceiling": 16,
            "routing_ttl_s": 0.2,
        },
    }


@pytest.fixture(scope="module", params=sorted(ENGINES))
def server(request, ray_session, world):
    """Serve on a free loopback port, two applications: main at /, chaos at /chaos."""
    from ray import serve

    from serve_apps.app import build_app

    engine = request.param
    # One engine's main app acknowledges feedback once it is in object storage, the other's
    # once it is in the local write-ahead log: both of the writer's modes behind real HTTP.
    acks = "store" if engine == "hf" else "wal"
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # main keeps one replica: a second one, kept 60 s after a burst, would leave the chaos
    # app (2 replicas at 0.5 CPU) without the CPUs its scale-up test needs on 2 cores.
    main = serve_args(
        world,
        f"main-{engine}",
        engine,
        preload=["tiny@production"],  # ready only once tiny:1 is loaded
        autoscaling={"min_replicas": 1, "max_replicas": 1},
    )
    main["event_acks"] = acks
    serve.run(build_app(main), name="main", route_prefix="/")
    chaos = serve_args(
        world,
        f"chaos-{engine}",
        engine,
        autoscaling={
            "min_replicas": 0,
            "initial_replicas": 2,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
            "downscale_delay_s": 4,
            "upscale_delay_s": 0,
        },
    )
    serve.run(build_app(chaos), name="chaos", route_prefix="/chaos")
    yield {"base": f"http://127.0.0.1:{port}", "world": world, "engine": engine, "acks": acks}
    serve.shutdown()
    for app in ("main", "chaos"):
        uri = str(world["root"] / f"events-{app}-{engine}")
        with contextlib.suppress(ValueError):
            ray_session.kill(ray_session.get_actor(writer_name(uri), namespace="flywheel"))


def client(server, prefix: str = "") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server['base']}{prefix}/v1", api_key=KEY, max_retries=0, timeout=60
    )


def events(server, app: str = "main") -> list:
    import ray

    uri = str(server["world"]["root"] / f"events-{app}-{server['engine']}")
    ray.get(ray.get_actor(writer_name(uri), namespace="flywheel").flush.remote())
    return [e for _, e in EventLog(uri).read()]


def test_openai_client_completions_and_chat(server) -> None:
    c = client(server)
    comp = c.completions.create(model="tiny:1", prompt="The Heron H2", max_tokens=5, temperature=0)
    assert comp.id.startswith("cmpl-") and comp.object == "text_completion"
    assert comp.choices[0].finish_reason in ("length", "stop")
    assert comp.usage.completion_tokens <= 5 and comp.usage.prompt_tokens > 0
    chat = c.chat.completions.create(
        model="tiny:1",
        messages=[{"role": "user", "content": "What is the warranty?"}],
        max_tokens=6,
        temperature=0,
    )
    assert chat.choices[0].message.role == "assistant"
    assert isinstance(chat.choices[0].message.content, str)
    # Greedy and seeded sampling are repeatable; max_tokens is clamped to the ceiling (16).
    again = c.completions.create(model="tiny:1", prompt="The Heron H2", max_tokens=5, temperature=0)
    assert again.choices[0].text == comp.choices[0].text
    long = c.completions.create(
        model="tiny:1", prompt="x", max_tokens=500, temperature=0.8, seed=3, stop=["zzzz"]
    )
    assert long.usage.completion_tokens <= 16
    # OpenAI's penalties are applied (not accepted and ignored): the engines' tests check how.
    penalized = c.completions.create(
        model="tiny:1", prompt="x", max_tokens=8, presence_penalty=1.5, frequency_penalty=0.5
    )
    assert penalized.choices[0].finish_reason in ("length", "stop")


def test_streaming_matches_and_ends_cleanly(server) -> None:
    c = client(server)
    kwargs = {"model": "tiny:1", "max_tokens": 8, "temperature": 0}
    full = c.chat.completions.create(messages=[{"role": "user", "content": "hi"}], **kwargs)
    chunks = list(
        c.chat.completions.create(
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            **kwargs,
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finals) == 1 and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    streamed = list(c.completions.create(prompt="The", stream=True, **kwargs))
    assert len({ch.id for ch in streamed}) == 1


def test_auth_limits_and_bad_input(server) -> None:
    base = server["base"]
    http = httpx.Client(timeout=60)  # the first request loads the tokenizer
    good = {"Authorization": f"Bearer {KEY}"}
    assert http.get(f"{base}/healthz").status_code == 200
    body = {"model": "tiny:1", "prompt": "hi", "max_tokens": 2}
    assert http.post(f"{base}/v1/completions", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    r = http.post(f"{base}/v1/completions", json=body, headers=wrong)
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert http.get(f"{base}/v1/models").status_code == 401
    r = http.post(f"{base}/v1/completions", json={**body, "prompt": "x" * 30_000}, headers=good)
    assert r.status_code == 413
    r = http.post(f"{base}/v1/completions", json={**body, "prompt": "word " * 400}, headers=good)
    assert r.status_code == 400 and "limit is 200" in r.json()["error"]["message"]
    r = http.post(f"{base}/v1/completions", content=b"{not json", headers=good)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = http.post(f"{base}/v1/completions", json={**body, "max_tokens": "many"}, headers=good)
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    r = http.post(f"{base}/v1/completions", json={**body, "bogus": 1}, headers=good)
    assert r.status_code == 400 and "bogus" in r.json()["error"]["message"]
    r = http.post(f"{base}/v1/completions", json={**body, "presence_penalty": 3}, headers=good)
    assert r.status_code == 400 and "presence_penalty" in r.json()["error"]["message"]
    r = http.post(f"{base}/v1/completions", json={**body, "stream_options": {"x": 1}}, headers=good)
    assert r.status_code == 400 and "stream_options.x" in r.json()["error"]["message"]
    r = http.post(f"{base}/v1/completions", json={**body, "model": "nope"}, headers=good)
    assert r.status_code == 404
    r = http.post(f"{base}/v1/feedback", json={"response_id": "x", "rating": 9}, headers=good)
    assert r.status_code == 400
    chat = {"model": "plain:1", "messages": [{"role": "user", "content": "hi"}]}
    r = http.post(f"{base}/v1/chat/completions", json=chat, headers=good)
    assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]
    models = http.get(f"{base}/v1/models", headers=good).json()["data"]
    assert {"tiny", "tiny@production", "tiny@canary"} <= {m["id"] for m in models}


def test_canary_split_sticky_users_and_explicit_versions(server) -> None:
    c = client(server)

    async def many(n: int) -> collections.Counter:
        ac = openai.AsyncOpenAI(base_url=f"{server['base']}/v1", api_key=KEY, max_retries=0)
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> str:
            async with sem:
                r = await ac.completions.create(
                    model="tiny", prompt="a", max_tokens=1, user=f"user-{i}"
                )
                return r.system_fingerprint

        return collections.Counter(await asyncio.gather(*(one(i) for i in range(n))))

    counts = asyncio.run(many(300))
    assert set(counts) == {"tiny:1", "tiny:2"}
    assert 12 <= counts["tiny:2"] <= 50  # 10% of 300 = 30, binomial sd 5.2
    sticky = {
        c.completions.create(
            model="tiny", prompt="a", max_tokens=1, user="alice"
        ).system_fingerprint
        for _ in range(15)
    }
    assert len(sticky) == 1
    assert (
        c.completions.create(model="tiny:2", prompt="a", max_tokens=1).system_fingerprint
        == "tiny:2"
    )
    assert (
        c.completions.create(model="tiny@canary", prompt="a", max_tokens=1).system_fingerprint
        == "tiny:2"
    )


def test_lora_version_answers_differently_from_its_base(server) -> None:
    c = client(server)
    kwargs = {"prompt": "The Heron H2 battery", "max_tokens": 8, "temperature": 0}
    base = c.completions.create(model="tiny:1", **kwargs).choices[0].text
    lora = c.completions.create(model="tiny:2", **kwargs).choices[0].text
    assert base != lora


def test_alias_move_takes_effect_without_restart(server) -> None:
    registry: ModelRegistry = server["world"]["registry"]
    c = client(server)
    registry.set_alias("tiny", "production", 2, expected=1)
    try:
        time.sleep(0.5)
        seen = {
            c.completions.create(
                model="tiny@production", prompt="a", max_tokens=1
            ).system_fingerprint
            for _ in range(3)
        }
        assert seen == {"tiny:2"}
    finally:
        registry.set_alias("tiny", "production", 1, expected=2)


def test_every_response_and_feedback_becomes_an_event(server) -> None:
    c = client(server)
    ids = [
        c.completions.create(
            model="tiny:1", prompt=f"call me at (555) 123-45{i:02d}", max_tokens=2, user="u1"
        ).id
        for i in range(3)
    ]
    stream = c.chat.completions.create(
        model="tiny:1", messages=[{"role": "user", "content": "s"}], max_tokens=2, stream=True
    )
    ids.append(next(iter(stream)).id)
    list(stream)
    r = httpx.post(
        f"{server['base']}/v1/feedback",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"response_id": ids[0], "rating": 2, "correction": "Email me: bob@example.com"},
    )
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    if server["acks"] == "store":  # in a segment already: no flush asked for
        uri = str(server["world"]["root"] / f"events-main-{server['engine']}")
        assert r.json()["id"] in {e.event_id for _, e in EventLog(uri).read()}
    deadline = time.time() + 20
    while True:
        log = events(server)
        served = {e.response_id: e for e in log if isinstance(e, ServedOutput)}
        if set(ids) <= set(served) or time.time() > deadline:
            break
        time.sleep(0.5)
    assert set(ids) <= set(served)
    assert served[ids[3]].stream and served[ids[0]].model_version == "tiny:1"
    assert "555" not in served[ids[0]].prompt and "<PHONE>" in served[ids[0]].prompt
    feedback = [e for e in log if isinstance(e, Feedback) and e.response_id == ids[0]]
    assert feedback and feedback[0].correction == "Email me: <EMAIL>"


def _replicas(app: str) -> list:
    import ray
    from ray.util.state import list_actors

    handles = []
    # This session's cluster by its address: other local Ray instances make "auto" ambiguous.
    address = ray.get_runtime_context().gcs_address
    for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000):
        if a.name and a.name.startswith(f"SERVE_REPLICA::{app}#Generator"):
            # A replica listed alive may be gone by the time it is looked up (scaling down).
            with contextlib.suppress(ValueError):
                handles.append(ray.get_actor(a.name, namespace="serve"))
    return handles


def test_replica_killed_under_load_loses_no_acknowledged_event(server) -> None:
    import ray

    prefix = f"{server['base']}/chaos"
    headers = {"Authorization": f"Bearer {KEY}"}

    async def load() -> tuple[list[httpx.Response], int]:
        async with httpx.AsyncClient(timeout=120) as http:

            async def one(i: int) -> httpx.Response:
                await asyncio.sleep(i * 0.05)
                return await http.post(
                    f"{prefix}/v1/completions",
                    headers=headers,
                    json={"model": "tiny:1", "prompt": f"p{i}", "max_tokens": 16, "temperature": 0},
                )

            tasks = [asyncio.create_task(one(i)) for i in range(300)]
            deadline = time.time() + 60  # the load scales the generator up to two replicas
            while len(replicas := await asyncio.to_thread(_replicas, "chaos")) < 2:
                assert time.time() < deadline, "did not scale up to 2 replicas"
                await asyncio.sleep(0.2)
            killed = replicas[0]._actor_id
            ray.kill(replicas[0], no_restart=True)
            replaced = False
            while not replaced and time.time() < deadline + 30:
                now = await asyncio.to_thread(_replicas, "chaos")
                replaced = len(now) == 2 and killed not in {r._actor_id for r in now}
                await asyncio.sleep(0.5)
            return await asyncio.gather(*tasks), replaced

    responses, replaced = asyncio.run(load())
    assert replaced, "Serve started a replacement for the killed replica"
    codes = collections.Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 503} and codes[200] >= 250, codes
    for r in responses:
        if r.status_code == 503:
            assert "retry" in r.json()["error"]["message"]
    ok_ids = {r.json()["id"] for r in responses if r.status_code == 200}
    deadline = time.time() + 30
    while time.time() < deadline:
        served = {e.response_id for e in events(server, "chaos") if isinstance(e, ServedOutput)}
        if ok_ids <= served:
            break
        time.sleep(0.5)
    assert ok_ids <= served


def test_scales_to_zero_then_serves_again(server) -> None:
    deadline = time.time() + 90
    while _replicas("chaos") and time.time() < deadline:
        time.sleep(1)
    assert _replicas("chaos") == [], "idle generator scaled to zero"
    r = httpx.post(
        f"{server['base']}/chaos/v1/completions",
        timeout=120,
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "tiny:1", "prompt": "wake", "max_tokens": 2},
    )
    assert r.status_code == 200, r.text
    assert json.loads(r.text)["choices"][0]["finish_reason"] in ("length", "stop")
    assert _replicas("chaos")


def test_events_survive_a_writer_crash(ray_session, tmp_path: Path) -> None:
    """Acknowledged events are in the write-ahead log; a restarted writer replays them."""
    import ray

    from actors.event_writer import EventWriter

    actor = (
        ray.remote(EventWriter)
        .options(max_restarts=1, max_task_retries=-1)
        .remote(str(tmp_path / "log"), None, str(tmp_path / "wal"), 3600.0, 10_000)
    )
    events_in = [
        ServedOutput(
            response_id=f"r{i}",
            model="m",
            model_version="m:1",
            endpoint="completions",
            prompt="p",
            completion="c",
            prompt_tokens=1,
            completion_tokens=1,
            finish_reason="stop",
            latency_ms=1.0,
        ).model_dump(mode="json")
        for i in range(5)
    ]
    assert ray.get(actor.append.remote(events_in)) == 5  # acknowledged, not yet flushed
    first = ray.get(actor.stats.remote())["pid"]
    ray.kill(actor, no_restart=False)
    deadline = time.time() + 30
    while True:  # ray.kill is asynchronous: the old process may still answer at first
        try:
            stats = ray.get(actor.stats.remote(), timeout=5)
            if stats["pid"] != first:
                break
        except Exception:
            pass
        assert time.time() < deadline, "the writer was not restarted"
        time.sleep(0.2)
    assert stats["recovered_on_start"] == 5
    got = {e.response_id for _, e in EventLog(str(tmp_path / "log")).read()}
    assert got == {f"r{i}" for i in range(5)}
    ray.kill(actor, no_restart=True)
