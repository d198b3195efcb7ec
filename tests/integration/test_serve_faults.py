"""Serving under faults, over real HTTP on the shared local Ray, with the registry and the
event log in a real S3 server (moto, which honours conditional writes) reached through a
TCP proxy the test can cut: object storage down mid-traffic, overload past the generator's
queue, a redeploy under traffic, and nothing leaked after the application is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import Counter

import httpx
import pytest

from actors.event_writer import writer_name
from core.events import EventLog
from core.registry import ModelRegistry
from jobs.runtime import free_port
from schemas.events import Feedback, ServedOutput
from schemas.storage import S3Settings, StorageSettings
from tests.conftest import make_bucket
from tests.tinymodel import make_tiny_model

pytestmark = pytest.mark.slow
KEY = "faults-key-0123456789"


class CuttableProxy:
    """A loopback TCP proxy to ``target``: ``down()`` closes it (connections refused, open
    ones reset), ``up()`` listens again on the same port, as an outage and its end."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        if self._listener:
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture(scope="module")
def faults(ray_session, moto_server, tmp_path_factory) -> dict:
    from ray import serve

    from serve_apps.app import build_app

    root = tmp_path_factory.mktemp("faults")
    proxy = CuttableProxy(int(moto_server.endpoint_url.rsplit(":", 1)[1]))
    s3 = moto_server.settings.s3.model_dump()
    settings = StorageSettings(s3=S3Settings(**{**s3, "endpoint_url": f"http://127.0.0.1:{proxy.port}",
                                                "request_timeout_s": 3}))  # fmt: skip
    bucket = make_bucket(moto_server)
    registry_uri, events_uri = f"s3://{bucket}/registry", f"s3://{bucket}/events"
    registry = ModelRegistry(registry_uri, settings, actor="test")
    registry.register("tiny", make_tiny_model(root / "one"))
    registry.register("tiny", make_tiny_model(root / "two", seed=1))  # never asked before
    registry.set_alias("tiny", "production", 1)

    def args(batch: int = 8) -> dict:
        return {
            "registry_uri": registry_uri,
            "event_log_uri": events_uri,
            "event_wal_dir": str(root / "wal"),
            "default_model": "tiny",
            "storage": settings.model_dump(mode="json"),
            "generator": {
                "num_cpus": 0.5,
                "max_batch_size": batch,
                "preload": ["tiny@production"],
                "max_ongoing_requests": 4,
                "max_queued_requests": 4,
                "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            },
            "gateway": {
                "api_keys": [KEY],
                "max_tokens_ceiling": 8,
                "routing_ttl_s": 0.2,
                # Overload here is Serve's queue, not a key's rate limit (test_trust has those).
                "rate_limits": {"key_per_minute": 1e6, "user_per_minute": 1e6},
            },
        }

    cpus = ray_session.available_resources().get("CPU", 0)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args()), name="faults", route_prefix="/")
    yield {"base": f"http://127.0.0.1:{port}", "proxy": proxy, "args": args, "cpus": cpus,
           "events": EventLog(events_uri, settings), "build": build_app}  # fmt: skip
    serve.shutdown()
    proxy.down()
    with contextlib.suppress(ValueError):
        ray_session.kill(ray_session.get_actor(writer_name(events_uri), namespace="flywheel"))


def complete(faults: dict, model: str = "tiny", **extra) -> httpx.Response:
    body = {"model": model, "prompt": "The Heron", "max_tokens": 2, **extra}
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.post(f"{faults['base']}/v1/completions", json=body, headers=headers, timeout=120)


def flush(faults: dict) -> None:
    """What the RayService head's preStop hook runs (``flywheel events flush``)."""
    from actors.event_writer import flush_all

    assert writer_name(faults["args"]()["event_log_uri"]) in flush_all()


def test_object_storage_down_mid_traffic(faults: dict) -> None:
    """Cached routes keep answering, an uncached version is a 503 (never a 500), feedback is
    still acknowledged, and once storage is back every acknowledged event is in a segment,
    once."""
    served = [complete(faults, m) for m in ("tiny", "tiny:1", "tiny@production")]
    assert [r.status_code for r in served] == [200] * 3
    faults["proxy"].down()
    try:
        during = [complete(faults, m) for m in ("tiny", "tiny:1", "tiny@production") * 3]
        assert [r.status_code for r in during] == [200] * 9, [r.text for r in during]
        uncached = complete(faults, "tiny:2")
        assert uncached.status_code == 503, uncached.text
        assert "retry-after" in uncached.headers
        rid = during[0].json()["id"]
        fb = httpx.post(f"{faults['base']}/v1/feedback", headers={"Authorization": f"Bearer {KEY}"},
                        json={"response_id": rid, "rating": 5}, timeout=60)  # fmt: skip
        assert fb.status_code == 200, fb.text  # durable in the writer's WAL, not yet in S3
    finally:
        faults["proxy"].up()
    ids = [r.json()["id"] for r in served + during]
    deadline = time.time() + 60
    while True:
        flush(faults)
        found = Counter(e.response_id for _, e in faults["events"].read()
                        if isinstance(e, ServedOutput))  # fmt: skip
        if set(ids) <= set(found) or time.time() > deadline:
            break
        time.sleep(1)
    print(f"outage: {len(ids)} responses served (9 during it), {len(found)} in the log after")
    assert set(ids) <= set(found), "every served response reached the event log"
    assert max(found[i] for i in ids) == 1, "none twice"
    feedback = [e for _, e in faults["events"].read() if isinstance(e, Feedback)]
    assert [e.response_id for e in feedback] == [rid]
    assert complete(faults, "tiny:2").status_code == 200  # storage back: loads


def test_overload_past_the_queue_is_shed_with_503(faults: dict) -> None:
    from ray import serve

    gateway = serve.get_deployment_handle("Gateway", app_name="faults")

    async def burst() -> list[int]:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=faults["base"], headers=headers, timeout=120) as c:
            body = {"model": "tiny:1", "prompt": "The Heron", "max_tokens": 8}
            replies = await asyncio.gather(*(c.post("/v1/completions", json=body)
                                             for _ in range(48)))  # fmt: skip
            return [r.status_code for r in replies]

    codes = Counter(asyncio.run(burst()))
    print(f"overload: 48 at once -> {dict(codes)}")
    assert set(codes) <= {200, 503}, codes
    assert codes[503] > 0 and codes[200] >= 4, codes  # 4 decoding, 4 queued, the rest shed
    # Memory stays flat: five more bursts leave the gateway's peak resident set where it was.
    first = gateway.cache_sizes.remote().result()["max_rss_kib"]
    for _ in range(5):
        assert set(asyncio.run(burst())) <= {200, 503}
    sizes = gateway.cache_sizes.remote().result()
    print(f"overload: gateway peak RSS {first / 1024:.0f} -> {sizes['max_rss_kib'] / 1024:.0f} MiB")
    assert sizes["max_rss_kib"] - first < 50 * 1024, sizes
    assert complete(faults, "tiny:1").status_code == 200  # and it recovers at once


def test_a_redeploy_under_traffic_answers_no_5xx(faults: dict) -> None:
    from ray import serve

    codes: Counter = Counter()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                codes[complete(faults, "tiny:1").status_code] += 1
            except httpx.HTTPError as e:  # a dropped connection is an error too
                codes[type(e).__name__] += 1

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    time.sleep(2)
    # A new generator config: Serve starts the new replica, then drains the old one.
    serve.run(faults["build"](faults["args"](batch=4)), name="faults", route_prefix="/")
    time.sleep(3)
    stop.set()
    thread.join(timeout=120)
    print(f"redeploy under traffic: {dict(codes)}")
    assert codes[200] > 0 and set(codes) == {200}, codes


def test_nothing_is_left_behind(faults: dict, ray_session) -> None:
    """Last in the module: after the application is deleted, no replica actor, placement
    group or CPU stays taken (the detached event writer is the fixture's to end)."""
    from ray import serve
    from ray.util.state import list_actors, list_placement_groups

    serve.delete("faults")
    address = ray_session.get_runtime_context().gcs_address
    deadline = time.time() + 60
    while True:
        alive = [a.name for a in list_actors(address=address, filters=[("state", "=", "ALIVE")])
                 if (a.name or "").startswith("SERVE_REPLICA::faults")]  # fmt: skip
        if not alive or time.time() > deadline:
            break
        time.sleep(1)
    assert alive == []
    groups = [g for g in list_placement_groups(address=address) if g.state == "CREATED"]
    assert groups == []
    deadline = time.time() + 30
    while ray_session.available_resources().get("CPU", 0) < faults["cpus"] - 1e-6:
        assert time.time() < deadline, ray_session.available_resources()
        time.sleep(1)
