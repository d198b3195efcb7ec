"""Routing by prompt prefix: a generator request goes to the replica that was sent the longest
prefix of its prompt under its version, so vLLM's prefix cache (``vllm.enable_prefix_caching``)
hits with several replicas too. Chosen by ``generator.routing``; Serve runs it in every process
that holds a generator handle (the gateway).

It builds on Ray Serve's ``PrefixCacheAffinityRouter``, which keeps a tree of the prompts each
replica was sent (one detached actor per deployment, shared by all handles; it inserts a
prompt once routed, adds and drops replicas, evicts the least recently used). What differs:

- Key: our requests are dicts of token ids, not text. A key is the version, then one
  character per token: a shared key prefix is a shared token prefix under one model or
  adapter, which is exactly what vLLM can reuse.
- Choice: Serve's multiplexing tier first (replicas with the version loaded; after its
  matching timeout, those with the fewest versions, then all), then the prefix within it.
  The parent asks for the tier twice per attempt and gets the fallback tier the second time,
  so a version could go to a replica without it; its low-match path also picks among all
  replicas. A busy replica loses its prefix, and a full one is passed over at once (a
  second rank, by load), instead of every request with a common system prompt waiting on
  the one replica that saw it first.
- The tree's actor asks for no CPU (see :meth:`PrefixAffinityRouter._start_tree_actor`),
  forgets old prompts (``history_tokens``), and is not waited on per request.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ray
from ray.serve._private.common import ReplicaID
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve._private.replica_result import ReplicaResult
from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter
from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.replica_wrapper import RunningReplica

TOKEN_BASE = 0x10000  # the first code point past the BMP: ids map to no surrogate
SEPARATOR = "\x00"  # ends the version part of a key: in no ref, below every token


@contextmanager
def _root_logging_kept() -> Iterator[None]:
    """Importing ``ray.llm``'s serve package replaces the root logger's handlers (JSON on
    stderr, INFO) once per process; the process's own set-up (``core.logs``, in
    ``flywheel serve`` where the app is built) must survive it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


with _root_logging_kept():
    # The implementation, not its public re-export ``ray.serve.llm.request_router``: that
    # module imports all of Ray Serve LLM, vLLM and torch (17 s on 2 cores) into the gateway.
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
        PrefixCacheAffinityRouter,
    )
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import (
        PrefixTreeActor,
    )


def prompt_key(model_id: str, prompt_ids: Sequence[int]) -> str:
    """The tree's key of a prompt: ``model_id``, :data:`SEPARATOR`, one character per token.

    vLLM reuses the KV blocks of an identical token prefix under the same model or adapter,
    so two keys share a prefix exactly as far as a cache hit could reach.
    """
    return model_id + SEPARATOR + "".join(chr(TOKEN_BASE + i) for i in prompt_ids)


class PrefixAffinityRouter(PrefixCacheAffinityRouter):
    """Serve request router of the generator (``request_router_config``); see the module."""

    def initialize_state(
        self,
        match_rate_threshold: float = 0.1,
        max_extra_requests: float = 4.0,
        history_tokens: int = 20_000,
        tree_actor: Any = None,
    ) -> None:
        """Serve calls it with ``request_router_kwargs`` (see ``schemas.serving.PrefixAffinity``);
        ``tree_actor`` stands in for the tree in tests."""
        self._max_extra_requests = max_extra_requests
        super().initialize_state(
            match_rate_threshold=match_rate_threshold,
            do_eviction=True,  # the parent's default keeps every prompt forever
            eviction_threshold_chars=history_tokens,
            eviction_target_chars=history_tokens * 9 // 10,  # the parent's own ratio
            tree_actor=self._start_tree_actor() if tree_actor is None else tree_actor,
        )

    def _start_tree_actor(self) -> Any:
        """The deployment's tree, named as the parent names it, but asking for no CPU: an actor
        without resources still needs one free CPU to be placed, the replicas of a small node
        hold them all, and routing would wait on it for good."""
        d = self._deployment_id
        actor = PrefixTreeActor.options(
            name="LlmPrefixTreeActor",
            namespace="::".join(filter(None, [SERVE_NAMESPACE, d.app_name, d.name])),
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
        ).remote()
        # As the parent does: serve.shutdown() then removes the detached actor too.
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        ray.get(controller._register_shutdown_cleanup_actor.remote(actor))
        return actor

    def _extract_text_from_request(self, pending_request: PendingRequest) -> str | None:
        """The key of a generator request (a dict with ``prompt_ids``); None otherwise, and
        the request then takes Serve's default routing."""
        for arg in pending_request.args or ():
            if isinstance(arg, dict) and arg.get("prompt_ids"):
                model_id = pending_request.metadata.multiplexed_model_id
                return prompt_key(model_id, arg["prompt_ids"])
        return None

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        """Record the prompt under the replica it went to, without waiting: the parent blocks
        the router's event loop on it for every request. An actor runs one caller's calls in
        order, so this router's next match sees the insert."""
        key = self._extract_text_from_request(pending_request)
        if key is not None:
            self._tree_actor.insert.remote(key, replica_id.to_full_id_str(), time.time())

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Ranks that Serve tries in turn, both from this attempt's multiplexing tier: the
        replicas holding the longest prefix of the request's key (unless busy), then two
        chosen by power of two choices (Serve then takes the least loaded)."""
        key = None if pending_request is None else self._extract_text_from_request(pending_request)
        if key is None:
            return await PowerOfTwoChoicesRequestRouter.choose_replicas(
                self, candidate_replicas, pending_request
            )
        tier = self._tier(candidate_replicas, pending_request)
        if not tier:
            return []
        by_prefix = self._not_busy(await self._longest_match(key, tier), tier)
        return [by_prefix, random.sample(tier, min(2, len(tier)))]

    def _tier(
        self, replicas: list[RunningReplica], pending_request: PendingRequest
    ) -> list[RunningReplica]:
        """Serve's candidates for this attempt, asked once (each ask moves its state on)."""
        if pending_request.metadata.multiplexed_model_id:
            ids = self.apply_multiplex_routing(pending_request=pending_request)
        else:
            ids = self.apply_locality_routing(pending_request=pending_request)
        return [r for r in replicas if r.replica_id in ids]

    async def _longest_match(self, key: str, tier: list[RunningReplica]) -> list[RunningReplica]:
        """The replicas of ``tier`` that were sent the longest prefix of ``key``; none when it
        covers less than ``match_rate_threshold`` of the prompt's tokens."""
        by_id = {r.replica_id.to_full_id_str(): r for r in tier}
        matched, owners = await self._tree_actor.prefix_match.remote(key, list(by_id))
        head = key.index(SEPARATOR) + 1  # the version matches wherever it was served
        if not owners or (len(matched) - head) / (len(key) - head) < self._match_rate_threshold:
            return []
        return [by_id[o] for o in owners if o in by_id]

    def _not_busy(
        self, chosen: list[RunningReplica], tier: list[RunningReplica]
    ) -> list[RunningReplica]:
        """``chosen`` less those with more than ``max_extra_requests`` in flight beyond the
        least busy of ``tier``, by Serve's cached queue lengths (an unknown one passes)."""
        lens = {r.replica_id: self._replica_queue_len_cache.get(r.replica_id) for r in tier}
        known = [n for n in lens.values() if n is not None]
        if not known:
            return chosen
        ceiling = min(known) + self._max_extra_requests
        return [r for r in chosen if (lens[r.replica_id] or 0) <= ceiling]
