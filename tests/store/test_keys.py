"""Python and Lua agree on a study's keys: every script reads its keys by name through the
prelude generated from `ld2.store.keys`, and no script (with the lib functions it calls) reads a
key beyond the count Python passes it."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from ld2.store.keys import SCRIPT_KEYS, STUDY_KEYS, StudyKeys, lua_prelude
from ld2.store.redis import _SOURCES

FOLDER = resources.files("ld2.store") / "scripts"
LIB = (FOLDER / "lib.lua").read_text()
FUNCTIONS = dict(
    re.findall(r"^local function (\w+)\(.*?\n(.*?)(?=^local function |\Z)", LIB, re.M | re.S)
)


def names_used(text: str, seen: set[str] | None = None) -> set[str]:
    """Study key names read as ``k.<name>`` in `text` and in the lib functions it calls."""
    seen = set() if seen is None else seen
    used = set(re.findall(r"\bk\.(\w+)\b", text))
    for called in set(re.findall(r"\b(\w+)\(", text)) & set(FUNCTIONS) - seen:
        seen.add(called)
        used |= names_used(FUNCTIONS[called], seen)
    return used


def test_the_lib_functions_are_found() -> None:
    assert {"study_keys", "reap_expired", "maybe_complete", "quarantine"} <= set(FUNCTIONS)
    assert "failed" in names_used("reap_expired(k, now, 3)")


@pytest.mark.parametrize("script", sorted(set(SCRIPT_KEYS) - {"cycle"}))
def test_no_script_reads_a_key_it_is_not_given(script: str) -> None:
    body = (FOLDER / f"{script}.lua").read_text()
    assert f"study_keys(KEYS, N_{script.upper()})" in body
    allowed = set(STUDY_KEYS[: SCRIPT_KEYS[script]])
    assert names_used(body) <= allowed, f"{script}.lua reads {names_used(body) - allowed}"
    assert not re.search(r"KEYS\[\d", body), "a key read by bare position"


def test_cycle_gives_reserve_its_own_keys_and_reply_key() -> None:
    body = (FOLDER / "cycle.lua").read_text()
    assert SCRIPT_KEYS["cycle"] == SCRIPT_KEYS["register"] >= SCRIPT_KEYS["reserve"]
    assert "for i = 1, N_RESERVE do" in body and "res_keys[N_RESERVE + 1] = reply_key" in body


def test_every_loaded_script_starts_with_the_generated_names() -> None:
    prelude = lua_prelude()
    assert "local STUDY_KEY_NAMES = {'s', 'back', 'leases'" in prelude
    for name, source in _SOURCES.items():
        assert source.startswith(prelude), name


def test_python_names_follow_the_same_order() -> None:
    keys = StudyKeys.of("p", "sid")
    assert keys.all() == [f"p:{{sid}}:{n}" for n in STUDY_KEYS]
    assert keys.for_script("reserve") == keys.all()[:5]
    assert [keys.s, keys.back, keys.best] == [keys.all()[0], keys.all()[1], keys.all()[8]]
