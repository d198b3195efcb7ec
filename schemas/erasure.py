"""The erasure ledger (``<event_log_uri>/_erasures/00000001.json``): what was erased for whom.

A record names its subject only by salted hashes of the user's pseudonyms (never the raw id
nor the pseudonym itself), so the ledger tells a rerun or the consumer which events and
which entries to forget without becoming a list of who asked to be forgotten.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import StrictModel


class ErasureRecord(StrictModel):
    """One erasure of one user's data (``flywheel data erase``)."""

    schema_version: Literal[1] = 1
    kind: Literal["erasure"] = "erasure"
    erasure_id: str = Field(description="`erasure-` and the record's number.")
    created_at: str = Field(description="UTC, ISO 8601.")
    salt: str = Field(description="Random hex the subject hashes are salted with.")
    subject_hashes: list[str] = Field(
        description="sha256(salt, pseudonym) of each pseudonym the user had (one per API key)."
    )
    event_ids: list[str] = Field(description="Every event erased: theirs and feedback on theirs.")
    response_ids: list[str] = Field(description="The responses served to them.")
    versions: list[str] = Field(
        default_factory=list,
        description="Model versions whose lineage holds these events (trained on them; not "
        "unlearned: retrain them).",
    )
