"""Reading dataset snapshots: always through the manifest, never by listing folders."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from core import storage
from core.data.tokenization import TokenizerBundle, load_tokenizer
from core.storage import Location
from schemas.snapshot import SnapshotManifest
from schemas.storage import StorageSettings


class SnapshotNotFound(FileNotFoundError):
    """No published snapshot (no manifest) at a location."""


def open_snapshot(
    uri: str | Location, settings: StorageSettings | None = None
) -> tuple[Location, SnapshotManifest]:
    """The snapshot folder and its manifest; a folder without a manifest is not a snapshot."""
    loc = storage.resolve(uri, settings)
    manifest = loc.join("manifest.json")
    if not storage.exists(manifest):
        raise SnapshotNotFound(
            f"no snapshot at {loc.uri}: manifest.json is missing (unfinished or wrong path)"
        )
    return loc, SnapshotManifest.model_validate(storage.read_json(manifest))


def resolve_snapshot(
    uri: str | Location, settings: StorageSettings | None = None
) -> tuple[Location, SnapshotManifest]:
    """A snapshot folder, or a dataset root meaning its newest published snapshot."""
    loc = storage.resolve(uri, settings)
    if storage.exists(loc.join("manifest.json")):
        return open_snapshot(loc)
    found = [open_snapshot(loc.join("snapshots", sid)) for sid in list_snapshots(loc)]
    if not found:
        raise SnapshotNotFound(f"no published snapshot at or under {loc.uri}")
    return max(found, key=lambda pair: pair[1].created_at)


def list_snapshots(root: str | Location, settings: StorageSettings | None = None) -> list[str]:
    """Ids of the published snapshots under a dataset root (``<root>/snapshots/<id>``)."""
    loc = storage.resolve(root, settings).join("snapshots")
    manifests = storage.list_files(loc, "*/manifest.json")
    return [m.relpath.split("/")[0] for m in manifests]


def shard_locations(snapshot: Location, manifest: SnapshotManifest) -> list[Location]:
    return [snapshot.join(s.path) for s in manifest.shards]


def snapshot_tokenizer(snapshot: Location, manifest: SnapshotManifest) -> TokenizerBundle:
    return load_tokenizer(snapshot.join(manifest.tokenizer.path).uri, _settings(snapshot))


def _settings(loc: Location) -> StorageSettings | None:
    return StorageSettings(s3=loc.s3) if loc.s3 else None


def iter_documents(snapshot: Location, manifest: SnapshotManifest) -> Iterator[list[int]]:
    """Token ids of each packed document (EOS included), shard by shard, in order.

    A document cut across blocks is joined back; this is how tests check that nothing was
    lost or leaked in packing.
    """
    eos = manifest.tokenizer.eos_token_id
    current: list[int] = []
    for shard in shard_locations(snapshot, manifest):
        table = storage.read_parquet(shard)
        for ids, segs, pad in zip(
            table["input_ids"].to_pylist(),
            table["segment_lengths"].to_pylist(),
            table["num_pad"].to_pylist(),
            strict=True,
        ):
            offset = 0
            for length in segs:
                current.extend(ids[offset : offset + length])
                offset += length
                if current and current[-1] == eos:
                    yield current
                    current = []
            assert offset == len(ids) - pad
    if current:
        yield current


def token_array(snapshot: Location, manifest: SnapshotManifest) -> np.ndarray:
    """Every real token of the snapshot in order (padding removed)."""
    parts = []
    for shard in shard_locations(snapshot, manifest):
        table = storage.read_parquet(shard)
        for ids, pad in zip(
            table["input_ids"].to_pylist(), table["num_pad"].to_pylist(), strict=True
        ):
            parts.append(np.asarray(ids[: len(ids) - pad], dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
