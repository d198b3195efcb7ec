"""The Serve application: gateway (ingress) -> generator. ``serve_apps.app:build_app`` is the
``import_path`` of ``infra/serve.yaml``; its ``args`` are a :class:`schemas.serving.ServeConfig`.

    serve run infra/serve.yaml          # or: flywheel serve
    serve deploy infra/serve.yaml       # onto a running cluster
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve

from core.config import expand_vars
from schemas.serving import ServeConfig
from serve_apps.gateway import Gateway, app
from serve_apps.generator import generator_deployment


def build_app(args: dict[str, Any]) -> Any:
    """Build the application from Serve config ``args`` (``${VAR:-default}`` expanded)."""
    cfg = ServeConfig.model_validate(expand_vars(dict(args), os.environ))
    generator = generator_deployment(cfg.generator).bind(
        cfg.registry_uri,
        cfg.storage.model_dump(mode="json"),
        cfg.generator.model_dump(mode="json"),
    )
    gateway = serve.deployment(
        serve.ingress(app)(Gateway),
        name="Gateway",
        num_replicas=cfg.gateway.num_replicas,
        ray_actor_options={"num_cpus": cfg.gateway.num_cpus},
        max_ongoing_requests=256,
        max_queued_requests=cfg.gateway.max_queued_requests,
    )
    return gateway.bind(generator, cfg.model_dump(mode="json"))
