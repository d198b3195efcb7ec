"""A person's approval of a loop's candidate: the loop files a request, a person decides.

Under ``<name>/versions/<NNNNNN>/approvals/``, ``000001.json`` is the loop's request (the
candidate passed the gate under ``approval: required``) and ``000002.json`` the decision,
each created exclusively. That exclusive create is what makes the first decision win: a
second one (two people at once, or the loop's timeout racing a person) is refused, so a
version is approved or rejected exactly once, and the audit entry goes first as for every
registry change.

Only the registry is involved: the controller reads the decision on each tick, so approving
works whether or not anyone can reach the controller's actor, and a restarted controller
finds it. The request is what limits approval to the loop's candidate: a version the loop
never asked about cannot be approved.
"""

from __future__ import annotations

import json
from typing import Literal

from core import storage
from core.registry.audit import now
from core.registry.card import refresh_card
from core.registry.versions import ModelRegistry, RegistryError, parse_ref
from core.storage import Location
from schemas.base import StrictModel

REQUEST, DECISION = 1, 2  # the records' sequence numbers in the version's approvals/


class ApprovalRecord(StrictModel):
    """The loop's request for a decision, or the decision."""

    ref: str
    kind: Literal["requested", "approved", "rejected"]
    by: str
    note: str = ""
    at: str


class ApprovalError(RegistryError):
    """The version is not awaiting a decision, or was decided already."""


def request(registry: ModelRegistry, ref: str, reason: str) -> ApprovalRecord:
    """File the loop's request for a decision on ``ref``; a retry finds the one it filed."""
    existing = _read(registry, ref, REQUEST)
    if existing is not None:
        return existing
    registry.audit.append("approval.request", ref, {"note": reason, "by": registry.actor})
    record = ApprovalRecord(ref=ref, kind="requested", by=registry.actor, note=reason, at=now())
    if not _create(registry, ref, REQUEST, record):
        return _read(registry, ref, REQUEST) or record  # a twin's retry filed it first
    return record


def decide(
    registry: ModelRegistry, ref: str, approved: bool, note: str, by: str | None = None
) -> ApprovalRecord:
    """Approve or reject ``ref`` (NAME:VERSION), once; ``by`` defaults to the registry's actor."""
    name, version, _ = parse_ref(ref)
    if version is None:
        raise ApprovalError(f"name the version to decide on: {name}:VERSION")
    ref = registry.get(f"{name}:{version}").ref  # refuses a version that does not exist
    if _read(registry, ref, REQUEST) is None:
        raise ApprovalError(
            f"{ref} is not awaiting approval: only a loop's candidate that passed the gate "
            "under `approval: required` can be approved or rejected (see `flywheel loop status`)"
        )
    if (earlier := decision(registry, ref)) is not None:
        raise _decided(earlier)
    who = by or registry.actor
    kind, action = ("approved", "approve") if approved else ("rejected", "reject")
    registry.audit.append(f"approval.{action}", ref, {"note": note, "by": who})
    record = ApprovalRecord(ref=ref, kind=kind, by=who, note=note, at=now())
    if not _create(registry, ref, DECISION, record):
        registry.audit.append("approval.conflict", ref, {"by": who})
        raise _decided(decision(registry, ref) or record)
    refresh_card(registry, ref)  # the card lists approvals with their audit entries
    return record


def reject_unless_decided(registry: ModelRegistry, ref: str, note: str) -> ApprovalRecord:
    """Reject ``ref`` as the registry's actor (the loop's timeout), unless a person decided
    first: theirs stands."""
    try:
        return decide(registry, ref, False, note)
    except ApprovalError:
        earlier = decision(registry, ref)
        if earlier is None:  # not a lost race: the request itself is missing
            raise
        return earlier


def decision(registry: ModelRegistry, ref: str) -> ApprovalRecord | None:
    """The decision on ``ref``, or None while it awaits one (or was never asked about)."""
    return _read(registry, ref, DECISION)


def _decided(earlier: ApprovalRecord) -> ApprovalError:
    return ApprovalError(
        f"{earlier.ref} was already {earlier.kind} by {earlier.by} at {earlier.at} "
        f"({earlier.note!r}): a version is decided once"
    )


def _loc(registry: ModelRegistry, ref: str, seq: int) -> Location:
    name, version, _ = parse_ref(ref)
    assert version is not None, ref  # callers hold a resolved NAME:VERSION
    return registry._version_dir(name, version).join("approvals", f"{seq:06d}.json")


def _read(registry: ModelRegistry, ref: str, seq: int) -> ApprovalRecord | None:
    loc = _loc(registry, ref, seq)
    if not storage.exists(loc):
        return None
    return ApprovalRecord.model_validate(storage.read_json(loc))


def _create(registry: ModelRegistry, ref: str, seq: int, record: ApprovalRecord) -> bool:
    body = json.dumps(record.model_dump(mode="json"), indent=1, sort_keys=True)
    return storage.create_exclusive(_loc(registry, ref, seq), body.encode())
