"""Batch generation: every prompt under a folder answered by one registry version, on Ray Data.

    flywheel generate --config jobs/configs/generate-demo.yaml
    python -m jobs.generate --config jobs/configs/generate-demo.yaml
    ray job submit --working-dir . -- python -m jobs.generate --config ...

Prompts are JSONL (also ``.gz``/``.zst``/``.bz2``) or Parquet files, local or ``s3://``: a
``prompt`` string, or ``messages`` rendered with the model's chat template. Ray Data streams
them through an actor pool of engines (``engine.kind``: vLLM's offline engine, or Hugging
Face decoding), each writing one Parquet part per batch under ``output_uri``: the row's id,
prompt, text, finish reason, token counts, error, the exact version and the sampling
settings. ``_manifest.json``, written last, adds the totals and the lineage (the version's
content hash and its own lineage, the input files).

Resumable: run the same recipe again after a crash or a ``ray job stop`` and only the rows no
part holds yet are generated. ``_job.json`` pins what the first run resolved (an alias is
resolved once): a rerun with another version, sampling or input is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from core import faults, storage
from core.config import load_config
from core.data.readers import plan_splits
from core.generation.loading import check_vllm_can_serve
from core.registry import ModelRegistry, parse_ref
from core.registry.provenance import code_version
from core.storage import Location
from jobs.generate_udf import GenerateUDF, read_split_rows
from jobs.runtime import Progress, config_args, init_ray, quiet_ray_data
from schemas.generate import GenerateConfig


class GenerateError(RuntimeError):
    """The recipe cannot run as asked (its output holds another run, no input)."""


def run_generate(cfg: GenerateConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Generate for every prompt not yet in the output; returns the manifest."""
    import ray

    progress = progress or Progress(cfg.name)
    registry = ModelRegistry(cfg.registry_uri, cfg.storage)
    out = storage.resolve(cfg.output_uri, cfg.storage)
    job = claim_job(cfg, registry, out)
    if cfg.engine.kind == "vllm":  # before any actor starts: an int8-dynamic version is hf-only
        try:
            check_vllm_can_serve(registry.get(job["model"]))
        except ValueError as e:
            raise GenerateError(str(e)) from None
    files = storage.list_files(storage.resolve(cfg.input.uri, cfg.storage))
    if not files:
        raise GenerateError(f"{cfg.input.uri}: no input files")
    splits = plan_splits(files, cfg.input.format, cfg.input.split_bytes)
    done = done_ids(out)
    progress.say(
        f"{job['model']}: {len(files)} files in {len(splits)} splits -> {out.uri}"
        + (f" (resuming: {len(done)} rows already generated)" if done else "")
    )
    init_ray(cfg.ray_address)
    quiet_ray_data()
    where = {f.relpath: f.location.uri for f in files}
    items = [{"split": json.dumps(asdict(s)), "file": where[s.relpath]} for s in splits]
    e = cfg.engine
    ds = (
        ray.data.from_items(items, override_num_blocks=len(items))
        # Reading is light next to decoding: a sliver of a CPU, so that engines given every
        # CPU of a node (num_cpus 1.9 of 2) still leave room for the reads that feed them.
        .map_batches(
            read_split_rows, batch_size=1, num_cpus=0.1, fn_kwargs={"cfg": cfg, "done": done}
        )
        .map_batches(
            GenerateUDF,
            fn_constructor_kwargs={
                "cfg": cfg,
                "version_ref": job["model"],
                "out": out,
                "fault_spec": os.environ.get(faults.ENV),
            },
            batch_size=e.batch_size,
            concurrency=e.concurrency,
            num_cpus=e.num_cpus,
            num_gpus=e.num_gpus,
        )
    )
    run = _drain(ds, progress)
    return finish(cfg, registry, job, out, files, run)


def _drain(ds: Any, progress: Progress) -> dict[str, Any]:
    """Run the pipeline, showing rows and tokens per second as parts land; this run's
    figures (``engine_seconds``: time inside the engines' generate calls, summed)."""
    run = {"rows": 0, "errors": 0, "completion_tokens": 0, "engine_seconds": 0.0}
    start = last = time.perf_counter()
    with progress.bar(desc="rows generated") as bar:
        for part in ds.iter_rows():
            for key, field in (
                ("rows", "rows"),
                ("errors", "errors"),
                ("engine_seconds", "engine_s"),
            ):
                run[key] += part[field]
            run["completion_tokens"] += part["completion_tokens"]
            bar.update(part["rows"])
            if (now := time.perf_counter()) - last >= 10:
                rate = run["completion_tokens"] / (now - start)
                progress.say(f"{run['rows']} rows ({run['errors']} errors), {rate:.0f} tokens/s")
                last = now
    run["seconds"] = round(time.perf_counter() - start, 3)
    run["engine_seconds"] = round(run["engine_seconds"], 3)
    progress.say(
        f"{run['rows']} rows generated this run ({run['errors']} errors, "
        f"{run['completion_tokens']} tokens in {run['seconds']:.0f}s)"
    )
    return run


def claim_job(cfg: GenerateConfig, registry: ModelRegistry, out: Location) -> dict[str, Any]:
    """What this output is a run of: written by the first run, checked by every rerun.

    A rerun that names the model by alias or bare name finishes with the version the first
    run resolved, wherever the alias points now; one naming another version is refused."""
    name, number, _ = parse_ref(cfg.model)
    settings = {  # what a rerun must share with the first run
        "sampling": cfg.sampling.model_dump(),
        "input": cfg.input.model_dump(),
        "max_prompt_tokens": cfg.max_prompt_tokens,
    }
    path = out.join("_job.json")
    first = storage.read_json_if_exists(path)
    if first is None:
        version = registry.get(cfg.model)
        job = {"model": version.ref, "content_sha256": version.content_sha256, **settings}
        if storage.create_exclusive(path, json.dumps(job, indent=2, sort_keys=True).encode()):
            return job
        first = storage.read_json(path)  # another run claimed it first: check against that
    same_model = parse_ref(first["model"])[0] == name and (
        number is None or f"{name}:{number}" == first["model"]
    )
    if not same_model:
        raise GenerateError(f"{out.uri} holds a run of {first['model']}, not {cfg.model}")
    changed = [k for k, v in settings.items() if first.get(k) != v]
    if changed:
        raise GenerateError(
            f"{out.uri} holds a run with other {', '.join(changed)} settings: resume with "
            "the same recipe, or write to a new output_uri"
        )
    return first


def done_ids(out: Location) -> frozenset[str]:
    """The ids every part already written holds."""
    ids: set[str] = set()
    for part in storage.list_files(out, "part-*.parquet"):
        ids.update(storage.read_parquet(part.location, ["id"])["id"].to_pylist())
    return frozenset(ids)


def finish(
    cfg: GenerateConfig,
    registry: ModelRegistry,
    job: dict[str, Any],
    out: Location,
    files: list[storage.FileEntry],
    run: dict[str, Any],
) -> dict[str, Any]:
    """Totals over every part (this run's and earlier ones'), and the lineage: the manifest.
    ``last_run``: what this run alone generated, and its times."""
    columns = ["id", "error", "prompt_tokens", "completion_tokens"]
    parts = storage.list_files(out, "part-*.parquet")
    tables = [storage.read_parquet(p.location, columns) for p in parts]
    ids = [i for t in tables for i in t["id"].to_pylist()]
    version = registry.get(job["model"])
    manifest = {
        "kind": "generation",
        "name": cfg.name,
        "model": job["model"],
        "requested_model": cfg.model,
        "content_sha256": job["content_sha256"],
        "version_lineage": version.lineage.model_dump(),
        "sampling": job["sampling"],
        "engine": cfg.engine.model_dump(),
        "input": {"uri": cfg.input.uri, "files": [[f.relpath, f.size] for f in files]},
        "parts": [p.relpath for p in parts],
        "rows": len(ids),
        "duplicates": len(ids) - len(set(ids)),
        "errors": sum(sum(1 for e in t["error"].to_pylist() if e) for t in tables),
        "prompt_tokens": sum(sum(t["prompt_tokens"].to_pylist()) for t in tables),
        "completion_tokens": sum(sum(t["completion_tokens"].to_pylist()) for t in tables),
        "last_run": run,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
    }
    storage.write_json(out.join("_manifest.json"), manifest)
    return manifest


def render(manifest: dict[str, Any]) -> str:
    keys = ("model", "rows", "errors", "duplicates", "prompt_tokens", "completion_tokens")
    return json.dumps({k: manifest[k] for k in keys}, indent=2)


def main(argv: Sequence[str] | None = None) -> None:
    args = config_args("Batch generation over prompts in object storage.", argv)
    cfg = load_config(GenerateConfig, args.config, args.overrides)
    manifest = run_generate(cfg)
    if args.result:
        storage.write_json(storage.resolve(args.result, cfg.storage), manifest)
    print(render(manifest))


if __name__ == "__main__":
    main()
