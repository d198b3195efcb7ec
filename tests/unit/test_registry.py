"""Model registry on local disk and on S3 (a server that honours conditional writes)."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from core import faults, storage
from core.registry import AliasConflict, ModelRegistry, RegistryError, parse_ref
from core.storage import StorageError
from schemas.registry import Lineage
from tests.tinymodel import model_dir


def registry(store) -> ModelRegistry:
    return ModelRegistry(store.uri("registry"), store.settings, actor="tester")


def test_register_get_download_and_idempotency(cas_store, tmp_path: Path) -> None:
    reg = registry(cas_store)
    v1 = reg.register("m", model_dir(tmp_path, "a"), lineage=Lineage(code_version="abc"))
    again = reg.register("m", model_dir(tmp_path, "a"))
    v2 = reg.register("m", model_dir(tmp_path, "b"), metrics={"loss": 1.5})
    assert (v1.version, again.version, v2.version) == (1, 1, 2)
    assert [v.version for v in reg.versions("m")] == [1, 2]
    assert reg.get("m").version == 2 and reg.get("m:1").lineage.code_version == "abc"
    out = reg.download("m:2", tmp_path / "dl")
    assert (out / "weights.bin").read_bytes() == b"b" * 100
    assert reg.models() == ["m"]
    with pytest.raises(RegistryError, match="not registered"):
        reg.get("m:9")
    with pytest.raises(RegistryError, match="no alias"):
        reg.get("m@production")


def test_parse_ref() -> None:
    assert parse_ref("demo:3") == ("demo", 3, None)
    assert parse_ref("demo@canary") == ("demo", None, "canary")
    assert parse_ref("demo") == ("demo", None, None)
    for bad in ("demo:x", "", "../x", "a b"):
        with pytest.raises(RegistryError):
            parse_ref(bad)


def test_lora_needs_an_existing_base(cas_store, tmp_path: Path) -> None:
    reg = registry(cas_store)
    with pytest.raises(RegistryError):
        reg.register("m", model_dir(tmp_path, "adapter"), format="lora", base="m:1")
    reg.register("m", model_dir(tmp_path, "base"))
    lora = reg.register("m", model_dir(tmp_path, "adapter"), format="lora", base="m:1")
    assert (lora.version, lora.base) == (2, "m:1")


def _register_many(uri: str, settings_json: str, worker: int, n: int, out) -> None:
    from schemas.storage import StorageSettings

    reg = ModelRegistry(uri, StorageSettings.model_validate_json(settings_json), f"w{worker}")
    tmp = Path(out)
    got = [
        reg.register("m", model_dir(tmp / f"w{worker}", f"{worker}-{i}")).version for i in range(n)
    ]
    (tmp / f"w{worker}.json").write_text(json.dumps(got))


def test_concurrent_registrations_are_unique_and_increasing(cas_store, tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    args = (cas_store.uri("registry"), cas_store.settings.model_dump_json())
    procs = [
        ctx.Process(target=_register_many, args=(*args, w, 4, str(tmp_path))) for w in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    results = [json.loads((tmp_path / f"w{w}.json").read_text()) for w in range(4)]
    everything = sorted(v for r in results for v in r)
    assert everything == list(range(1, 17))
    assert all(r == sorted(r) for r in results)
    assert [v.version for v in registry(cas_store).versions("m")] == list(range(1, 17))


def _crash_registering(uri: str, settings_json: str, src: str, marker: str) -> None:
    import os

    from schemas.storage import StorageSettings

    os.environ[faults.ENV] = f"registry.register=exit:{marker}"
    ModelRegistry(uri, StorageSettings.model_validate_json(settings_json)).register("m", Path(src))


def test_crash_mid_registration_leaves_nothing_visible(cas_store, tmp_path: Path) -> None:
    src = model_dir(tmp_path, "a")
    ctx = mp.get_context("spawn")
    args = (cas_store.uri("registry"), cas_store.settings.model_dump_json(), str(src))
    p = ctx.Process(target=_crash_registering, args=(*args, str(tmp_path / "m")))
    p.start()
    p.join(120)
    assert p.exitcode != 0 and (tmp_path / "m").exists()
    reg = registry(cas_store)
    assert reg.versions("m") == [] and reg.models() == []
    with pytest.raises(RegistryError):
        reg.get("m:1")
    assert reg.register("m", src).version == 2  # number 1 was claimed by the dead process


def test_alias_compare_and_swap_history_and_rollback(cas_store, tmp_path: Path) -> None:
    reg = registry(cas_store)
    for tag in "abc":
        reg.register("m", model_dir(tmp_path, tag))
    reg.set_alias("m", "production", 1, expected=None)
    reg.set_alias("m", "production", 2, expected=1, reason="better")
    with pytest.raises(AliasConflict):
        reg.set_alias("m", "production", 3, expected=1)
    with pytest.raises(RegistryError):
        reg.set_alias("m", "production", 7)
    assert reg.aliases("m") == {"production": 2}
    assert reg.get("m@production").version == 2
    back = reg.rollback("m", "production")
    assert (back.version, back.previous) == (1, 2)
    assert [(r.seq, r.version) for r in reg.alias_history("m", "production")] == [
        (1, 1),
        (2, 2),
        (3, 1),
    ]
    reg.set_alias("m", "canary", 3)
    reg.set_alias("m", "canary", None, expected=3)
    assert reg.aliases("m") == {"production": 1}


def test_concurrent_alias_moves_exactly_one_wins(cas_store, tmp_path: Path) -> None:
    reg = registry(cas_store)
    for tag in "ab":
        reg.register("m", model_dir(tmp_path, tag))
    reg.set_alias("m", "production", 1)
    latest = reg._latest_alias("m", "production")
    # Two movers both saw seq 1; the second to write must lose even though it checked first.
    loc = reg.root.join("m", "aliases", "production", f"{latest.seq + 1:08d}.json")
    # Two movers' records differ (version, time, reason); the same bytes would be a retry.
    assert storage.create_exclusive(loc, b'{"mover": 1}') is True
    assert storage.create_exclusive(loc, b'{"mover": 2}') is False


def test_audit_chain_detects_tampering(cas_store, tmp_path: Path) -> None:
    reg = registry(cas_store)
    reg.register("m", model_dir(tmp_path, "a"))
    reg.register("m", model_dir(tmp_path, "b"))
    reg.set_alias("m", "production", 2)
    reg.audit.append("job.submit", "job-1", {"entrypoint": "python -m jobs.train"})
    entries = reg.audit.entries()
    assert [e.action for e in entries] == ["register", "register", "alias.move", "job.submit"]
    assert reg.audit.verify() == []
    second = reg.audit.folder.join("00000002.json")
    body = storage.read_json(second)
    body["details"]["format"] = "lora"
    storage.write_json(second, body)
    assert any("edited" in p for p in reg.audit.verify())
    storage.delete(second)
    assert any("missing" in p for p in reg.audit.verify())


def test_store_without_conditional_writes_is_refused(s3_store) -> None:
    with pytest.raises(StorageError, match="conditional writes"):
        registry(s3_store)


def test_audit_head_catches_truncation_and_a_rechained_rewrite(cas_store, tmp_path) -> None:
    from core.registry.audit import entry_hash

    reg = registry(cas_store)
    reg.register("m", model_dir(tmp_path, "a"))
    reg.set_alias("m", "production", 1)
    reg.audit.append("job.submit", "job-1", {})
    head = reg.audit.head()
    assert head["count"] == 3 and reg.audit.verify() == []
    assert reg.audit.verify(expect_head=head["hash"]) == []
    # The alias move is recorded before the alias file exists (an intent, if we crash).
    actions = [e.action for e in reg.audit.entries()]
    assert actions == ["register", "alias.move", "job.submit"]

    # Cut the last entry off: the chain alone is intact, the head says 3.
    last = reg.audit.folder.join("00000003.json")
    saved = storage.read_bytes(last)
    storage.delete(last)
    assert any("cut" in p for p in reg.audit.verify())
    storage.write_bytes(last, saved)

    # Rewrite entry 2 and re-chain entry 3 after it: every hash checks, the heads do not.
    entries = reg.audit.entries()
    second, third = entries[1], entries[2]
    second.details = {**second.details, "to": 99}
    second.hash = entry_hash(second)
    third.prev_hash = second.hash
    third.hash = entry_hash(third)
    for e in (second, third):
        storage.write_bytes(
            reg.audit.folder.join(f"{e.seq:08d}.json"), e.model_dump_json(indent=1).encode()
        )
    problems = reg.audit.verify()
    assert [p for p in problems if "rewritten" in p] and not [p for p in problems if "edited" in p]
    # Heads rewritten too: only an anchor kept elsewhere still catches it.
    for e in (second, third):
        loc = reg.audit.heads.join(f"{e.seq:08d}.json")
        storage.write_bytes(loc, json.dumps({"count": e.seq, "hash": e.hash}).encode())
    assert reg.audit.verify() == []
    assert any("anchored head" in p for p in reg.audit.verify(expect_head=head["hash"]))
