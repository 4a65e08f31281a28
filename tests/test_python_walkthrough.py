"""docs/python.md runs: its ```python blocks, in order, in one namespace (a notebook)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"
FENCE = re.compile(r"^```python\n(.*?)^```\s*$", re.S | re.M)


def blocks() -> list[str]:
    return FENCE.findall(DOC.read_text())


def test_the_doc_has_blocks_to_run() -> None:
    found = blocks()
    assert len(found) >= 10
    assert all(block.strip() for block in found)


def test_the_python_walkthrough_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ld2.client import Client
    from ld2.worker import runners

    for name in ("REDIS_URL", "LD2_REDIS_URL", "LD2_API_URL", "LD2_API_TOKEN", "LD2_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LD2_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # a notebook imports from its directory
    registered = set(runners.REGISTRY)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    try:
        for k, block in enumerate(blocks(), 1):
            exec(compile(block, f"{DOC.name}, python block {k}", "exec"), namespace)
    finally:  # whatever block failed: no process, server or module left behind
        for value in list(namespace.values()):
            if isinstance(value, subprocess.Popen) and value.poll() is None:
                value.terminate()
                value.wait(30)
        for value in list(namespace.values()):
            if isinstance(value, Client):
                value.close()
        sys.modules.pop("heat", None)
        for name in set(runners.REGISTRY) - registered:
            del runners.REGISTRY[name]

    assert namespace["grid"].shape == (21, 21)
    assert namespace["answer"].point == {"x": 1234}
    assert namespace["worker"].returncode == 0  # stopped cleanly, its trials handed back
