"""The body of a packed batch (``/trial/packed/batch``): several trials' packed results in one.

Layout: a 4-byte big-endian length, that many bytes of a JSON list with one object per trial
(``study_id``, ``trial_id``, ``start``, ``count``, ``bytes``), then each trial's results as
`ld2.core.results.pack` wrote them, in the list's order, ``bytes`` long each, and nothing
after. Pure: the API checks each part against its study (`results.unpack_checked`) itself.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ld2.core.errors import InvalidInput

BATCH_LIMIT = 64
"""Trials one batch may register (and lease) at most."""
BATCH_BYTES = 4 * 1024 * 1024
"""A client sends a larger batch a trial at a time (the API's default body limit is 64 MiB;
a batch is for short trials, whose results are small)."""
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class Part:
    """One trial of a batch: its identity and its packed results."""

    study_id: str
    trial_id: str
    start: int
    count: int
    body: bytes


def frame(parts: Sequence[Part]) -> bytes:
    trials = [
        {"study_id": p.study_id, "trial_id": p.trial_id, "start": p.start, "count": p.count,
         "bytes": len(p.body)}
        for p in parts
    ]  # fmt: skip
    head = json.dumps(trials, separators=(",", ":")).encode()
    return b"".join([_LENGTH.pack(len(head)), head, *(p.body for p in parts)])


def unframe(data: bytes) -> list[Part]:
    """The parts of a batch body; `InvalidInput` naming ``body`` (or ``body.trials[i].<field>``)
    for anything but exactly the layout above."""
    if len(data) < _LENGTH.size:
        raise InvalidInput("body", "a batch starts with the 4-byte length of its JSON list")
    (size,) = _LENGTH.unpack_from(data)
    end = _LENGTH.size + size
    if end > len(data):
        raise InvalidInput("body", f"the JSON list is said to be {size} bytes; the body is shorter")
    try:
        head = json.loads(data[_LENGTH.size : end])
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidInput("body", f"the batch's list is not JSON: {err}") from None
    if not isinstance(head, list):
        raise InvalidInput("body", "the batch's head must be a JSON list of trials")
    if len(head) > BATCH_LIMIT:
        raise InvalidInput("body", f"{len(head)} trials; a batch holds at most {BATCH_LIMIT}")
    parts: list[Part] = []
    seen: set[str] = set()
    at = end
    for i, item in enumerate(head):
        where = f"body.trials[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(where, "must be an object")
        texts: list[str] = []
        for name in ("study_id", "trial_id"):
            text = item.get(name)
            if not isinstance(text, str) or not text:
                raise InvalidInput(f"{where}.{name}", "must be a non-empty string")
            texts.append(text)
        if texts[1] in seen:
            raise InvalidInput(f"{where}.trial_id", "appears twice in the batch")
        seen.add(texts[1])
        numbers: dict[str, int] = {}
        for name, least in (("start", 0), ("count", 1), ("bytes", 0)):
            value = item.get(name)
            if type(value) is not int or value < least:
                raise InvalidInput(f"{where}.{name}", f"must be an integer >= {least}")
            numbers[name] = value
        if at + numbers["bytes"] > len(data):
            raise InvalidInput(f"{where}.bytes", "runs past the end of the body")
        body = data[at : at + numbers["bytes"]]
        at += numbers["bytes"]
        parts.append(Part(texts[0], texts[1], numbers["start"], numbers["count"], body))
    if at != len(data):
        raise InvalidInput("body", f"{len(data) - at} bytes after the last trial's results")
    return parts
