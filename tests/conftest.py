"""Shared test fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

WIRE = Path(__file__).resolve().parents[1].parent / "shared" / "wire"


def wire_json(name: str) -> Any:
    return json.loads((WIRE / name).read_text())


@pytest.fixture(scope="session")
def wire_dir() -> Path:
    assert WIRE.is_dir(), f"the lite_dist2 captures are expected at {WIRE}"
    return WIRE
