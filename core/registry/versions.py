"""The model registry: numbered versions, aliases moved by compare-and-swap, an audit log.

Layout under the registry root (local folder or ``s3://``)::

    <name>/versions/000003/claim.json        who claimed number 3 (create-exclusive)
    <name>/versions/000003/files/...         the HF model folder or LoRA adapter
    <name>/versions/000003/manifest.json     written last: the version exists from here on
    <name>/versions/000003/evals/0001.json   evaluation reports, appended later
    <name>/versions/000003/card/README.md    its model card, rewritten as reports arrive
    <name>/aliases/production/00000007.json  the 7th move of the alias (create-exclusive)
    _audit/00000042.json                     audit entries, each chained to the previous

Every mutation is a *create-exclusive* write (:func:`core.storage.create_exclusive`), so
concurrent writers from several processes or machines never overwrite each other: version
numbers are claimed, alias moves and audit entries are sequence numbers, and whoever creates
a number first wins; the others retry (versions, audit) or get an :class:`AliasConflict`.
A registration that crashes leaves at most a claim without a manifest, which nobody reads.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
from pathlib import Path
from typing import Any

from core import faults, storage
from core.registry import card as model_card
from core.registry.audit import AuditLog, now
from core.registry.lineage import walk_snapshot
from core.storage import Location
from schemas.registry import AliasRecord, FileRecord, Lineage, ModelVersion, Quantization
from schemas.storage import StorageSettings

_MAX_RETRIES = 1000


class RegistryError(ValueError):
    """A reference that does not resolve, or a request the registry refuses."""


class AliasConflict(RegistryError):
    """An alias moved since the caller looked (compare-and-swap failed)."""


def default_actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """``name:3`` -> (name, 3, None); ``name@canary`` -> (name, None, 'canary');
    ``name`` -> (name, None, None), meaning the latest version."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return _check_name(name), None, alias
    if ":" in ref:
        name, version = ref.rsplit(":", 1)
        if not version.isdigit():
            raise RegistryError(f"bad reference {ref!r}: expected name:VERSION or name@ALIAS")
        return _check_name(name), int(version), None
    return _check_name(ref), None, None


def _check_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name[0] in "._":
        raise RegistryError(f"bad model name {name!r}: use letters, digits, '-', '_', '.'")
    return name


class ModelRegistry:
    """Versions, aliases and the audit log of every model under one root."""

    def __init__(
        self, uri: str | Location, settings: StorageSettings | None = None, actor: str | None = None
    ) -> None:
        self.root = storage.resolve(uri, settings)
        self.actor = actor or default_actor()
        self.audit = AuditLog(self.root.join("_audit"), self.actor)
        if not self.root.is_local:
            storage.check_exclusive_create(self.root)

    # -- reading -------------------------------------------------------------------------------

    def models(self) -> list[str]:
        entries = storage.list_files(self.root, "*/versions/*/manifest.json")
        return sorted({e.relpath.split("/")[0] for e in entries})

    def versions(self, name: str) -> list[ModelVersion]:
        folder = self._versions_dir(name)
        return [
            ModelVersion.model_validate(storage.read_json(e.location))
            for e in storage.list_files(folder, "*/manifest.json")
        ]

    def get(self, ref: str) -> ModelVersion:
        """The version a reference points to: ``name:3``, ``name@alias`` or ``name`` (latest)."""
        name, version, alias = parse_ref(ref)
        if alias is not None:
            version = self.aliases(name).get(alias)
            if version is None:
                raise RegistryError(f"{name} has no alias {alias!r}")
        if version is None:
            versions = self.versions(name)
            if not versions:
                raise RegistryError(f"no registered versions of {name!r}")
            return versions[-1]
        manifest = self._version_dir(name, version).join("manifest.json")
        if not storage.exists(manifest):
            raise RegistryError(f"{name}:{version} is not registered")
        return ModelVersion.model_validate(storage.read_json(manifest))

    def files_location(self, version: ModelVersion) -> Location:
        return self._version_dir(version.name, version.version).join("files")

    def card_location(self, version: ModelVersion) -> Location:
        return self._version_dir(version.name, version.version).join("card", "README.md")

    def card(self, ref: str) -> str:
        """The version's model card (``core.registry.card``), built and stored if missing."""
        return model_card.read_card(self, self.get(ref)) or model_card.store_card(self, ref)

    def download(self, ref: str, dest: Path) -> Path:
        """Copy a version's files into ``dest`` (a local folder), with its model card as
        ``README.md`` (which loaders ignore); returns it."""
        version = self.get(ref)
        folder = storage.download_dir(self.files_location(version), dest)
        text = model_card.folder_card(self, version)
        if text:  # a version whose card cannot be built still downloads: it is only a card
            (folder / "README.md").write_text(text)
        return folder

    # -- registering ---------------------------------------------------------------------------

    def register(
        self,
        name: str,
        source: Path,
        *,
        format: str = "hf",
        base: str | None = None,
        lineage: Lineage | None = None,
        metrics: dict[str, Any] | None = None,
        description: str = "",
        quantization: Quantization | None = None,
    ) -> ModelVersion:
        """Register the files of local folder ``source`` as the next version of ``name``.

        Registering the same content again (same files, format and base) returns the
        existing version. A LoRA adapter names its base version, which must exist; a
        quantized version records how it was made from its source (``lineage.parent``).
        """
        _check_name(name)
        if format == "lora":
            base = self._base_ref(base)
        files = _file_records(Path(source))
        content = _content_hash(files, format, base)
        for existing in self.versions(name):
            if existing.content_sha256 == content:
                return existing
        number = self._claim_number(name, content)
        target = self._version_dir(name, number)
        storage.upload_dir(Path(source), target.join("files"))
        faults.maybe_fail("registry.register")
        version = ModelVersion(
            name=name,
            version=number,
            format=format,
            base=base,
            content_sha256=content,
            files=files,
            created_at=now(),
            created_by=self.actor,
            lineage=lineage or Lineage(),
            metrics=metrics or {},
            description=description,
            quantization=quantization,
        )
        # Recorded before it is visible: a crash between leaves an intent, not a secret change.
        self.audit.append(
            "register", version.ref, {"format": format, "base": base, "content_sha256": content}
        )
        storage.write_json(target.join("manifest.json"), version.model_dump(mode="json"))
        model_card.refresh_card(self, version.ref)
        return version

    def _base_ref(self, base: str | None) -> str:
        if not base:
            raise RegistryError("a LoRA adapter needs base='name:VERSION'")
        return self.get(base).ref

    def _claim_number(self, name: str, content: str) -> int:
        folder = self._versions_dir(name)
        claims = storage.list_files(folder, "*/claim.json")
        number = max((int(c.relpath.split("/")[0]) for c in claims), default=0) + 1
        claim = json.dumps({"content_sha256": content, "actor": self.actor, "at": now()})
        for _ in range(_MAX_RETRIES):
            if storage.create_exclusive(
                self._version_dir(name, number).join("claim.json"), claim.encode()
            ):
                return number
            number += 1
        raise RegistryError(f"could not claim a version number for {name}")

    # -- aliases -------------------------------------------------------------------------------

    def aliases(self, name: str) -> dict[str, int]:
        """Current aliases of a model (unset ones left out)."""
        current = {}
        for alias in self._alias_names(name):
            record = self._latest_alias(name, alias)
            if record and record.version is not None:
                current[alias] = record.version
        return current

    def alias_history(self, name: str, alias: str) -> list[AliasRecord]:
        folder = self.root.join(name, "aliases", alias)
        return [
            AliasRecord.model_validate(storage.read_json(e.location))
            for e in storage.list_files(folder, "*.json")
        ]

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int | None,
        *,
        expected: int | str | None = "any",
        reason: str = "",
    ) -> AliasRecord:
        """Point ``alias`` at ``version`` (None unsets it), if it still points at
        ``expected`` (compare-and-swap; ``"any"`` skips the check)."""
        _check_name(alias)
        if version is not None:
            self.get(f"{name}:{version}")
        latest = self._latest_alias(name, alias)
        current = latest.version if latest else None
        if expected != "any" and expected != current:
            raise AliasConflict(
                f"{name}@{alias} points at {current}, not {expected}: it moved; look again"
            )
        record = AliasRecord(
            name=name,
            alias=alias,
            seq=(latest.seq if latest else 0) + 1,
            version=version,
            previous=current,
            at=now(),
            actor=self.actor,
            reason=reason,
        )
        loc = self.root.join(name, "aliases", alias, f"{record.seq:08d}.json")
        details = {"from": current, "to": version, "seq": record.seq, "reason": reason}
        self.audit.append("alias.move", f"{name}@{alias}", details)  # before the move
        if not storage.create_exclusive(loc, record.model_dump_json(indent=1).encode()):
            self.audit.append("alias.move.conflict", f"{name}@{alias}", {"seq": record.seq})
            raise AliasConflict(f"{name}@{alias} moved concurrently; look again")
        for moved in sorted({version, current} - {None}):  # both cards list the move
            model_card.refresh_card(self, f"{name}:{moved}")
        return record

    def rollback(self, name: str, alias: str, reason: str = "rollback") -> AliasRecord:
        """Move ``alias`` back to the version it pointed at before its last move."""
        latest = self._latest_alias(name, alias)
        if latest is None or latest.previous is None:
            raise RegistryError(f"{name}@{alias} has no earlier version to roll back to")
        return self.set_alias(name, alias, latest.previous, expected=latest.version, reason=reason)

    def _alias_names(self, name: str) -> list[str]:
        entries = storage.list_files(self.root.join(name, "aliases"), "*/*.json")
        return sorted({e.relpath.split("/")[0] for e in entries})

    def _latest_alias(self, name: str, alias: str) -> AliasRecord | None:
        entries = storage.list_files(self.root.join(name, "aliases", alias), "*.json")
        if not entries:
            return None
        return AliasRecord.model_validate(storage.read_json(entries[-1].location))

    # -- traffic split -------------------------------------------------------------------------

    def routing(self, name: str) -> dict[str, Any]:
        """How the gateway splits traffic for ``name``: ``{"weights": {alias: percent},
        "seq": n}``; all traffic to ``production`` when nothing was set."""
        entries = storage.list_files(self.root.join(name, "routing"), "*.json")
        if not entries:
            return {"weights": {"production": 100}, "seq": 0}
        return storage.read_json(entries[-1].location)

    def set_routing(
        self,
        name: str,
        weights: dict[str, float],
        *,
        expected_seq: int | None = None,
        reason: str = "",
    ) -> dict[str, Any]:
        """Set the traffic split by alias (compare-and-swap on its sequence number)."""
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise RegistryError("traffic weights must be non-negative and not all zero")
        for alias in weights:
            _check_name(alias)
        current = self.routing(name)
        if expected_seq is not None and expected_seq != current["seq"]:
            raise AliasConflict(f"{name} routing changed (seq {current['seq']}); look again")
        record = {
            "weights": weights,
            "seq": current["seq"] + 1,
            "at": now(),
            "actor": self.actor,
            "reason": reason,
        }
        loc = self.root.join(name, "routing", f"{record['seq']:08d}.json")
        self.audit.append("routing.set", name, {"weights": weights, "reason": reason})
        if not storage.create_exclusive(loc, json.dumps(record, indent=1).encode()):
            self.audit.append("routing.set.conflict", name, {"seq": record["seq"]})
            raise AliasConflict(f"{name} routing changed concurrently; look again")
        return record

    # -- evaluation reports --------------------------------------------------------------------

    def add_eval_report(self, ref: str, report: dict[str, Any]) -> int:
        """Append an evaluation report to a version; returns its number."""
        version = self.get(ref)
        folder = self._version_dir(version.name, version.version).join("evals")
        n = len(storage.list_files(folder, "*.json")) + 1
        body = json.dumps({"at": now(), "actor": self.actor, **report}, indent=1, sort_keys=True)
        while not storage.create_exclusive(folder.join(f"{n:04d}.json"), body.encode()):
            n += 1
        self.audit.append(
            "eval.report", version.ref, {"report": n, "decision": report.get("decision")}
        )
        model_card.refresh_card(self, version.ref)
        return n

    def eval_reports(self, ref: str) -> list[dict[str, Any]]:
        version = self.get(ref)
        folder = self._version_dir(version.name, version.version).join("evals")
        return [storage.read_json(e.location) for e in storage.list_files(folder, "*.json")]

    # -- lineage -------------------------------------------------------------------------------

    def lineage(self, ref: str) -> list[dict[str, Any]]:
        """Walk from a version back through its base, parents and dataset snapshots to the
        raw inputs (and whatever the snapshots came from, e.g. feedback events).

        Returns nodes depth-first: ``{"depth", "kind", "id", "detail"}``.
        """
        nodes: list[dict[str, Any]] = []
        self._walk_version(self.get(ref), 0, nodes, set())
        return nodes

    def _walk_version(self, v: ModelVersion, depth: int, nodes: list, seen: set) -> None:
        if v.ref in seen:
            return
        seen.add(v.ref)
        code = v.lineage.code_version[:12]
        detail = f"{v.layout}, created {v.created_at} by {v.created_by}, code {code}"
        nodes.append({"depth": depth, "kind": "version", "id": v.ref, "detail": detail})
        for snap in v.lineage.dataset_snapshots:
            walk_snapshot(snap.uri, snap.snapshot_id, depth + 1, nodes, self.root.s3)
        for parent in filter(None, [v.base, v.lineage.parent]):
            try:
                self._walk_version(self.get(parent), depth + 1, nodes, seen)
            except RegistryError:
                nodes.append({"depth": depth + 1, "kind": "missing", "id": parent, "detail": ""})
        if v.lineage.base_model:
            nodes.append(
                {
                    "depth": depth + 1,
                    "kind": "base_model",
                    "id": v.lineage.base_model,
                    "detail": "external starting point",
                }
            )

    # -- paths ---------------------------------------------------------------------------------

    def _versions_dir(self, name: str) -> Location:
        return self.root.join(_check_name(name), "versions")

    def _version_dir(self, name: str, version: int) -> Location:
        return self._versions_dir(name).join(f"{version:06d}")


def _file_records(source: Path) -> list[FileRecord]:
    if not source.is_dir():
        raise RegistryError(f"{source} is not a folder")
    records = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        records.append(
            FileRecord(
                path=path.relative_to(source).as_posix(), size=path.stat().st_size, sha256=digest
            )
        )
    if not records:
        raise RegistryError(f"{source} is empty")
    return records


def _content_hash(files: list[FileRecord], format: str, base: str | None) -> str:
    payload = {"files": [f.model_dump() for f in files], "format": format, "base": base}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
