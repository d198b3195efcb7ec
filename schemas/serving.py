"""Serving: the settings of the gateway and generator deployments (the OpenAI-compatible
bodies are in :mod:`schemas.openai`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.base import StrictModel
from schemas.storage import StorageSettings


class Autoscaling(StrictModel):
    """Ray Serve autoscaling of the generator."""

    min_replicas: int = Field(1, ge=0, description="0 allows scaling to zero when idle.")
    initial_replicas: int | None = Field(None, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(4, gt=0)
    upscale_delay_s: float = Field(2.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)


class VLLMSettings(StrictModel):
    """The vLLM engine (``generator.engine: vllm``); one engine per base model per replica."""

    enforce_eager: bool = Field(
        False, description="Skip torch.compile: starts in ~30 s instead of minutes, decodes slower."
    )
    kv_cache_space_gib: int = Field(1, ge=1, description="CPU: KV cache size per engine (GiB).")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="GPU: memory share.")
    max_model_len: int | None = Field(None, ge=16, description="None: the model's own limit.")
    max_num_seqs: int = Field(64, ge=1, description="Sequences decoded together (continuous).")
    enable_lora: bool = Field(
        True,
        description="Serve LoRA versions as adapters on their base. On CPU vLLM then runs "
        "eager (no torch.compile): turn it off where only full models are served.",
    )
    max_lora_rank: int = Field(
        16,
        ge=1,
        description="Largest adapter rank served. vLLM pads every adapter to it, and on CPU its "
        "LoRA kernels gather a (rank x width) matrix per token: keep it at the ranks you train.",
    )
    max_loras: int = Field(4, ge=1, description="Adapters active in one decoding step.")
    enable_prefix_caching: bool = Field(
        True,
        description="Reuse the KV cache of a prompt prefix seen before (a shared system "
        "prompt): bench/prefix_cache.py measured time to first token 75 ms on vs 608 ms off "
        "for a 1,201-token prompt (SmolLM2-135M, 2 CPU cores).",
    )
    bind_cores: bool = Field(
        True, description="CPU: pin the engine's threads to cores this replica claims alone."
    )


class PrefixAffinity(StrictModel):
    """Routing by prompt prefix (``generator.routing``, :mod:`serve_apps.prefix_router`): a
    request goes to the replica that was sent the longest prefix of its prompt (tokens, under
    its version), among those Serve's multiplexing offers, where vLLM's prefix cache can hit."""

    match_rate_threshold: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of a prompt's tokens a replica must have seen as its prefix to be "
        "chosen for it; below, load chooses (power of two choices).",
    )
    max_extra_requests: float | None = Field(
        None,
        ge=0,
        description="A replica holding the prefix is passed over when it has more requests in "
        "flight than the least busy candidate plus this; None: autoscaling."
        "target_ongoing_requests, the load past which Serve would add a replica.",
    )
    history_tokens: int = Field(
        20_000,
        ge=1,
        description="Prompt tokens remembered per replica, least recently used forgotten first. "
        "Keep it under what a replica's KV cache holds, or requests follow prefixes vLLM has "
        "evicted: 1 GiB holds about 23,000 tokens of SmolLM2-135M in float32 (from its shapes).",
    )


class GeneratorSettings(StrictModel):
    """The model replicas."""

    engine: Literal["hf", "vllm"] = Field(
        "hf", description="hf: Hugging Face decoding, batched; vllm: vLLM, continuous batching."
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs per replica (also its torch threads).")
    num_gpus: float = Field(0.0, ge=0)
    max_models_per_replica: int = Field(3, ge=1, description="Versions a replica keeps loaded.")
    preload: list[str] = Field(
        default_factory=list,
        description="Versions or aliases (name@alias) a replica loads before it takes traffic.",
    )
    stream_interval_ms: float = Field(
        50.0, ge=0, description="Tokens are sent on at most this often (0: every token)."
    )
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    max_ongoing_requests: int = Field(32, ge=1)
    max_queued_requests: int = Field(
        256,
        ge=1,
        description="Requests waiting for a replica at most; beyond, a 503 (Serve sheds them).",
    )
    dtype: Literal["float32", "bfloat16"] = "float32"
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    routing: Literal["auto", "power_of_two", "prefix_affinity"] = Field(
        "power_of_two",
        description="How a request picks its replica among those Serve's multiplexing offers: "
        "power_of_two, the less loaded of two (Serve's default); prefix_affinity, the one "
        "that was sent the longest prefix of its prompt (vLLM with prefix caching only: the "
        "hf engine keeps no KV cache across requests); auto, prefix_affinity where it can hit. "
        "Opt-in: test_serve's replica-kill test under it timed out in a full suite run, not "
        "yet explained.",
    )
    prefix_affinity: PrefixAffinity = Field(default_factory=PrefixAffinity)

    @property
    def routes_by_prefix(self) -> bool:
        """Whether the generator deployment routes by prompt prefix."""
        return self.routing == "prefix_affinity" or (self.routing == "auto" and self._caches)

    @property
    def _caches(self) -> bool:
        return self.engine == "vllm" and self.vllm.enable_prefix_caching

    @model_validator(mode="after")
    def _prefix_affinity_needs_a_cache(self) -> GeneratorSettings:
        if self.routing == "prefix_affinity" and not self._caches:
            raise ValueError(
                "routing: prefix_affinity needs engine: vllm with vllm.enable_prefix_caching "
                "(nothing else reuses a prompt's prefix): set routing: auto or power_of_two"
            )
        return self


class ApiKey(StrictModel):
    """One API key and who holds it. Events record the id, never the key."""

    id: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Who holds the key: in events and limits."
    )
    key: str = Field(min_length=8, description="The secret a client sends as Bearer token.")
    trust_user_ids: bool = Field(
        False,
        description="The holder authenticates its own end users (an application's backend): "
        "each `user` it names is a principal of its own in curation and canary votes. Off: "
        "everything the key sends is one principal, whatever `user` says.",
    )
    requests_per_minute: float | None = Field(
        None, gt=0, description="This key's own limit; None: gateway.rate_limits.key_per_minute."
    )
    feedback_per_minute: float | None = Field(
        None, gt=0, description="Its own feedback limit; None: rate_limits.feedback_per_minute."
    )


class RateLimits(StrictModel):
    """Token buckets per gateway replica: a refill rate per minute and a burst."""

    key_per_minute: float = Field(600, gt=0, description="Requests per API key.")
    user_per_minute: float = Field(60, gt=0, description="Requests per end user of a key.")
    feedback_per_minute: float = Field(120, gt=0, description="Feedback requests per API key.")
    burst_s: float = Field(
        10, gt=0, description="A full bucket holds this many seconds' worth of requests."
    )
    max_tracked: int = Field(
        100_000, ge=1, description="Buckets kept; the longest idle are forgotten first."
    )


class GatewaySettings(StrictModel):
    """The OpenAI-compatible front door."""

    api_keys_env: str = Field(
        "FLYWHEEL_API_KEYS",
        description="Environment variable with comma-separated keys: `id:secret` or a bare "
        "`secret` (its id is then `key-` and 8 hex digits of its hash).",
    )
    api_keys: list[ApiKey | str] = Field(
        default_factory=list, description="Keys from config (prefer the environment)."
    )
    pseudonym_key_env: str = Field(
        "FLYWHEEL_PSEUDONYM_KEY",
        description="Environment variable with the secret that user and session ids are hashed "
        "with (HMAC-SHA256) before they reach any event; unset: derived from the API keys.",
    )
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    feedback_window_s: float = Field(
        86400, gt=0, description="How long after a response its feedback is taken."
    )
    max_body_bytes: int = Field(1_000_000, gt=0)
    max_prompt_tokens: int = Field(1024, gt=0)
    max_tokens_ceiling: int = Field(256, gt=0, description="max_tokens is clamped to this.")
    default_max_tokens: int = Field(64, gt=0)
    request_timeout_s: float = Field(120.0, gt=0)
    routing_ttl_s: float = Field(1.0, ge=0, description="How long aliases/weights are cached.")
    max_cached_models: int = Field(
        256, ge=1, description="Model names whose aliases and weights are cached (LRU)."
    )
    num_cpus: float = Field(0.1, gt=0)
    num_replicas: int = Field(1, ge=1)
    max_queued_requests: int = Field(
        1024, ge=1, description="Requests waiting for a gateway replica; beyond, a 503."
    )


class ServeConfig(StrictModel):
    """What ``serve_apps.app:build_app`` takes (the ``args`` of the Serve config)."""

    schema_version: Literal[1] = 1
    registry_uri: str = Field(description="Registry the versions are served from.")
    event_log_uri: str = Field(description="Where served outputs and feedback go.")
    default_model: str = Field(description="Model name used when a request names none known.")
    storage: StorageSettings = Field(default_factory=StorageSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    event_wal_dir: str | None = Field(
        None,
        description="Local folder of the writer's write-ahead log (~ expanded); None: one per "
        "event log under ~/.local/state/flywheel/wal. A disk that outlives a reboot.",
    )
    event_acks: Literal["wal", "store"] = Field(
        "wal",
        description="When an event counts as logged (feedback's 200): 'wal', in the local "
        "write-ahead log (lost with the node's disk if not flushed yet, ~1 s); 'store', in a "
        "segment in object storage (survives losing the node; a segment write of latency).",
    )
