"""What the Lua scripts answer, as typed values.

Every script replies with a word first (``ok``, ``missing``, a rejection, ...), then fields.
`Word` lists every word a script may say (``tests/store/test_replies.py`` reads the scripts and
checks it), so a reply is matched against names, not bare strings, and a word nobody expects is
a loud error rather than a silent fall-through.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ld2.core.errors import REJECTIONS


class Word(StrEnum):
    OK = "ok"
    IGNORED = "ignored"  # a late result of a solved or finished study, not stored
    MISSING = "missing"  # no such study
    INACTIVE = "inactive"  # the study is done, paused or cancelled
    UNCHANGED = "unchanged"  # pause of a paused study, resume of a running one
    EMPTY = "empty"  # nothing to lease right now
    LATER = "later"  # a prefetch refused: the study has few points left waiting
    SKIPPED = "skipped"  # cycle: no reserve after a register (see cycle.lua)
    HELD = "held"  # a name claimed by another study
    SOLVED = "solved"  # retry of a study that already has its answer
    EXISTS = "exists"  # create: the study id is taken
    STOP = "stop"  # heartbeat: abandon the trial
    UNKNOWN = "unknown"
    REISSUED = "reissued"
    WRONG_WORKER = "wrong_worker"
    DUPLICATE = "duplicate"
    MISMATCH = "mismatch"
    VECTOR_LENGTH = "vector_length"

    @property
    def rejects(self) -> bool:
        """A trial refused (HTTP 409 with this word as its reason)."""
        return self.value in REJECTIONS


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Reply:
    """A script's word and the fields after it (as text)."""

    word: Word
    fields: tuple[str, ...]

    @classmethod
    def of(cls, raw: Any) -> Reply:
        items = [_text(x) for x in raw] if isinstance(raw, list) else [_text(raw)]
        try:
            word = Word(items[0])
        except ValueError:
            raise RuntimeError(f"a store script answered {items!r}: not a known reply") from None
        return cls(word, tuple(items[1:]))

    @property
    def status(self) -> str:
        """The study's status, for the replies shaped ``{word, status, ...}``."""
        return self.fields[0] if self.fields else ""

    @property
    def study_gone(self) -> bool:
        """The study will hand out nothing again: deleted, or finished."""
        return self.word is Word.MISSING or (self.word is Word.INACTIVE and self.status == "done")


@dataclass(frozen=True, slots=True)
class Lease:
    """reserve.lua's ``{'ok', trial id, start, count, attempt, now, deadline, status}``."""

    trial_id: str
    start: int
    count: int
    attempt: int
    now_ms: int
    deadline_ms: int
    status: str

    @classmethod
    def of(cls, reply: Reply) -> Lease:
        tid, start, count, attempt, now, deadline, status = reply.fields[:7]
        return cls(tid, int(start), int(count), int(attempt), int(now), int(deadline), status)
