"""The ld2 snapshot format, checked before anything of it is written.

A snapshot is ``{"format": "ld2-snapshot", "version": 1, "studies": [...]}``; each study holds
its Redis hash (as text), its waiting ranges, its quarantined ranges, its minimize keys and
its result blocks (base64). Anything else — a missing field, a study hash without the fields
a running study needs, a spec that is not a valid study — is refused as a whole with the
field named, so a bad file can never leave half a study behind.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ld2.core import models as m
from ld2.core.errors import InvalidInput
from ld2.core.study import StudySpec, parse_study

REQUIRED_HASH = (
    "id", "spec", "status", "total", "cursor", "done", "failed", "tseq", "sizes", "strides",
    "jagged", "order", "r_n", "r_keys", "timeout_ms", "max_attempts", "strategy", "registered_ms",
)  # fmt: skip
"""Fields of a study hash that the scripts read (see docs/store.md)."""

STATUSES = ("wait", "running", "paused", "done")


class SnapshotStudy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hash: dict[str, str]
    back: list[tuple[int, int, int]]
    failed: list[str]
    best: list[str] = []
    results: list[tuple[str, int, str]]


class Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["ld2-snapshot"]
    version: Literal[1]
    studies: list[SnapshotStudy]


def parse_snapshot(data: Any) -> list[tuple[SnapshotStudy, StudySpec, list[bytes]]]:
    """Each study of an ld2 snapshot with its parsed spec and decoded result blocks."""
    try:
        snap = Snapshot.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "snapshot"
        raise InvalidInput(f"snapshot.{where}", first["msg"]) from None
    out = []
    for k, study in enumerate(snap.studies):
        where = f"snapshot.studies[{k}]"
        missing = [f for f in REQUIRED_HASH if f not in study.hash]
        if missing:
            raise InvalidInput(f"{where}.hash", f"missing {', '.join(missing)}")
        if study.hash["status"] not in STATUSES:
            raise InvalidInput(f"{where}.hash.status", f"unknown status {study.hash['status']!r}")
        try:
            spec = parse_study(m.StudyRegistry.model_validate_json(study.hash["spec"]))
        except (ValidationError, InvalidInput) as err:
            raise InvalidInput(f"{where}.hash.spec", f"not a valid study: {err}") from None
        try:
            payloads = [base64.b64decode(p, validate=True) for _, _, p in study.results]
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{where}.results", "a result block is not base64") from None
        for member in study.failed:
            if not member.split(":", 1)[0].isdigit():
                raise InvalidInput(f"{where}.failed", f"not a quarantined range: {member!r}")
        out.append((study, spec, payloads))
    return out
