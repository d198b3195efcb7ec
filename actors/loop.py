"""Starting the feedback loop's actors: one consumer and one controller per model, named,
detached and restartable (``max_restarts=-1``), so they outlive the command that started
them and come back after a crash, resuming from their persisted state.

The one place the loop's actors meet Ray: here the plain classes are wrapped with
``ray.remote``, and the controller is handed its collaborators, the consumer behind an
:class:`ActorProxy` (so it calls plain methods) and a :class:`RayJobRunner`.
"""

from __future__ import annotations

import os
from typing import Any

from actors.controller import LoopController
from actors.feedback import FeedbackConsumer
from actors.job_runner import RayJobRunner
from core import faults
from schemas.loop import LoopConfig

NAMESPACE = "flywheel"


class ActorProxy:
    """An actor handle whose methods are called like a local object's: ``proxy.m(x)`` is
    ``ray.get(handle.m.remote(x), timeout=timeout_s)``. The controller calls the consumer
    under its tick lock: a consumer that hangs must fail the tick (retried next one), not
    hold the controller forever."""

    def __init__(self, handle: Any, timeout_s: float = 120.0) -> None:
        self._handle = handle
        self._timeout_s = timeout_s

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # pickling probes dunders before __init__ ran
            raise AttributeError(name)
        method = getattr(self._handle, name)

        def call(*args: Any) -> Any:
            import ray

            return ray.get(method.remote(*args), timeout=self._timeout_s)

        return call


def actor_names(model_name: str) -> tuple[str, str]:
    return f"flywheel-feedback-{model_name}", f"flywheel-controller-{model_name}"


def start_loop(cfg: LoopConfig) -> tuple[Any, Any]:
    """Get or start the consumer and controller actors for ``cfg.model_name``."""
    import ray

    consumer_name, controller_name = actor_names(cfg.model_name)
    env = {faults.ENV: os.environ[faults.ENV]} if os.environ.get(faults.ENV) else {}
    options = {
        "namespace": NAMESPACE,
        "get_if_exists": True,
        "lifetime": "detached",
        "max_restarts": -1,
        "max_task_retries": -1,
        "max_concurrency": 8,
        "num_cpus": 0,
        "runtime_env": {"env_vars": env} if env else None,
    }
    body = cfg.model_dump(mode="json")
    consumer = (
        ray.remote(FeedbackConsumer)
        .options(name=consumer_name, **options)
        .remote(body, autostart=True)
    )
    controller = (
        ray.remote(LoopController)
        .options(name=controller_name, **options)
        .remote(body, ActorProxy(consumer), RayJobRunner(cfg.jobs), autostart=True)
    )
    ray.get([consumer.status.remote(), controller.status.remote()])
    return consumer, controller


def get_loop(model_name: str) -> tuple[Any, Any]:
    """The running loop's actors; ValueError if it is not running."""
    import ray

    consumer_name, controller_name = actor_names(model_name)
    return (
        ray.get_actor(consumer_name, namespace=NAMESPACE),
        ray.get_actor(controller_name, namespace=NAMESPACE),
    )


def stop_loop(model_name: str) -> None:
    """Stop and remove the loop's actors (their state stays in storage)."""
    import ray

    for handle in get_loop(model_name):
        ray.get(handle.stop.remote())
        ray.kill(handle, no_restart=True)
