"""Key names, in one place for Python and Lua.

A study's keys share the hash tag ``{<study id>}`` (one Redis Cluster slot per study); the
global keys share ``{g}``. Scripts receive a study's keys as KEYS in the order of `STUDY_KEYS`,
each script the first `SCRIPT_KEYS[name]` of them, then (with a request id) its reply key. The
scripts learn the names and counts from a prelude generated here (`lua_prelude`), so Python and
Lua cannot disagree about which position holds which key.
"""

from __future__ import annotations

from dataclasses import dataclass

STUDY_KEYS = ("s", "back", "leases", "trials", "failed", "res", "done", "events", "best")
"""The study hash; ranges handed back; leases by deadline; trial records; quarantined ranges;
packed results by trial; trials by first point; the progress stream; minimize's best rows."""

SCRIPT_KEYS = {
    "create": 1,
    "heartbeat": 4,
    "live": 4,
    "release_worker": 4,
    "reserve": 5,
    "fail": 5,
    "reap": 5,
    "retry": 5,
    "register": 9,
    "control": 9,
    "cycle": 9,
}
"""How many of `STUDY_KEYS` each study script receives (``tests/store/test_keys.py`` checks
that no script reads a key beyond its count)."""


@dataclass(frozen=True, slots=True)
class StudyKeys:
    """One study's keys by name."""

    s: str
    back: str
    leases: str
    trials: str
    failed: str
    res: str
    done: str
    events: str
    best: str

    @classmethod
    def of(cls, prefix: str, sid: str) -> StudyKeys:
        return cls(*(f"{prefix}:{{{sid}}}:{name}" for name in STUDY_KEYS))

    def all(self) -> list[str]:
        return [getattr(self, name) for name in STUDY_KEYS]

    def for_script(self, script: str) -> list[str]:
        return [getattr(self, name) for name in STUDY_KEYS[: SCRIPT_KEYS[script]]]


def reply_key(prefix: str, sid: str, request_id: str) -> str:
    """Where the replies to `request_id` in study `sid` are remembered (the study's tag)."""
    return f"{prefix}:{{{sid}}}:reply:{request_id}"


def global_key(prefix: str, name: str) -> str:
    return f"{prefix}:{{g}}:{name}"


def lua_prelude() -> str:
    """Lua constants: ``STUDY_KEY_NAMES`` and ``N_<SCRIPT>`` (each script's key count)."""
    names = ", ".join(f"'{n}'" for n in STUDY_KEYS)
    counts = "".join(f"local N_{name.upper()} = {n}\n" for name, n in SCRIPT_KEYS.items())
    return f"local STUDY_KEY_NAMES = {{{names}}}\n{counts}"
