"""The model registry: numbered versions with lineage (``versions``), the hash-chained audit
log (``audit``), lineage walks below a version (``lineage``), code provenance
(``provenance``) and model cards (``card``). The public names are re-exported here:
``from core.registry import ModelRegistry``."""

from core.registry.audit import AuditLog, entry_hash, now
from core.registry.versions import (
    AliasConflict,
    ModelRegistry,
    RegistryError,
    default_actor,
    parse_ref,
)

__all__ = [
    "AliasConflict",
    "AuditLog",
    "ModelRegistry",
    "RegistryError",
    "default_actor",
    "entry_hash",
    "now",
    "parse_ref",
]
