"""Settings: lite_dist2's TableConfig file names, plus ld2's own API settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ld2.core.errors import InvalidInput

MiB = 1024 * 1024


def read_json_file(path: Path) -> Any:
    """A JSON file's content; a file that is missing, a directory, not UTF-8 or not JSON is one
    InvalidInput naming it (``FILE: not valid JSON: Expecting ',' delimiter at line 3, column 5``).
    """
    from ld2.core.studyfile import read_json  # the one reader; imported late (it pulls in numpy)

    return read_json(path)


class TableConfig(BaseModel):
    """``table_config.json`` with lite_dist2's names and defaults; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")

    port: int = Field(8000, ge=0, le=65535)
    trial_timeout_seconds: int = Field(600, ge=1)
    timeout_check_interval_seconds: int = Field(60, ge=1)
    curriculum_path: Path = Path("curriculum.json")
    curriculum_save_interval_seconds: int | None = Field(None, ge=1)

    @classmethod
    def load(cls, path: Path) -> TableConfig:
        data = read_json_file(path)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "(top level)"
            msg = "unknown setting" if first["type"] == "extra_forbidden" else first["msg"]
            raise InvalidInput(f"{path}: {where}", msg) from None


class ApiSettings(BaseModel):
    """What `ld2 api` runs with (passed to each uvicorn worker process as JSON)."""

    redis_url: str | None = None
    state_dir: Path | None = None
    prefix: str = "ld2"
    token: str | None = None
    max_body_bytes: int = 64 * MiB
    table: TableConfig = TableConfig()
