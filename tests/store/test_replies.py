"""The words the Lua scripts answer with are exactly those `ld2.store.replies.Word` knows."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from ld2.core.errors import REJECTIONS
from ld2.store.replies import Lease, Reply, Word

FOLDER = resources.files("ld2.store") / "scripts"
SCRIPTS = {p.name: p.read_text() for p in FOLDER.iterdir() if p.name.endswith(".lua")}


def words_said() -> set[str]:
    """Every reply word: the first item of a returned table, or a returned bare string."""
    out: set[str] = set()
    for text in SCRIPTS.values():
        code = re.sub(r"--[^\n]*", "", text)  # comments may quote words too
        out |= set(re.findall(r"\{'([a-z_]+)'", code))
        out |= set(re.findall(r"\breturn '([a-z_]+)'", code))
    return out


def test_every_word_a_script_says_is_known() -> None:
    said = words_said()
    assert {"ok", "missing", "duplicate", "stop", "exists"} <= said  # the scan finds them
    assert said <= {w.value for w in Word}, said - {w.value for w in Word}


def test_every_known_word_is_said_somewhere() -> None:
    assert {w.value for w in Word} <= words_said()


def test_rejections_are_the_words_with_a_409() -> None:
    assert {w.value for w in Word if w.rejects} == set(REJECTIONS)


def test_an_unknown_word_is_loud() -> None:
    with pytest.raises(RuntimeError, match="not a known reply"):
        Reply.of([b"maybe", b"running"])


def test_a_lease_reply_reads_by_name() -> None:
    reply = Reply.of([b"ok", b"sid-0x1", b"10", b"5", b"2", b"1000", b"61000", b"running"])
    assert reply.word is Word.OK
    assert Lease.of(reply) == Lease("sid-0x1", 10, 5, 2, 1000, 61000, "running")
    assert Reply.of([b"inactive", b"done"]).study_gone
    assert not Reply.of([b"inactive", b"paused"]).study_gone
