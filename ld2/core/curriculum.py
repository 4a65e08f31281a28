"""lite_dist2's ``curriculum.json`` read as ld2 studies: pure, no I/O (the store writes them).

Finished studies ("storages") come with their results, which are mapped back to flat indices
(rows repeated by lite_dist2's trial-id collisions count once). Active studies are registered
afresh: lite_dist2 keeps their partial results in trial files, not in the curriculum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from ld2.core import models as m
from ld2.core import portable, results
from ld2.core.errors import InvalidInput
from ld2.core.space import Space
from ld2.core.study import StudySpec, parse_study


def registry_of(study: m.StudyCommon, space: m.ParameterAlignedSpaceModel) -> m.StudyRegistry:
    """A registry from a summary/storage: the study-level space back in registry form."""
    axes = [
        m.LineSegmentRegistry(name=a.name, type=a.type, size=a.size, step=a.step, start=a.start)
        for a in space.axes
    ]
    common = {name: getattr(study, name) for name in m.StudyCommon.model_fields}
    return m.StudyRegistry(
        **common, parameter_space=m.ParameterAlignedSpaceRegistry(type="aligned", axes=axes)
    )


def result_blocks(spec: StudySpec, storage: m.MappingsStorage) -> list[tuple[int, np.ndarray]]:
    """Rows of a MappingsStorage as contiguous blocks of results in flat order."""
    space: Space = spec.space
    dim = space.dim
    by_flat: dict[int, Any] = {}
    for r, row in enumerate(storage.values):
        params = [portable.decode(v, a.kind) for v, a in zip(row[:dim], space.axes, strict=True)]
        flat = space.flat_of_point(params)
        if flat is None:
            raise InvalidInput(f"results.values[{r}]", "this point is not on the study's grid")
        res = [portable.decode(v, spec.value_type) for v in row[dim:]]
        by_flat.setdefault(flat, res if spec.vector else res[0])
    blocks: list[tuple[int, np.ndarray]] = []
    run: list[Any] = []
    run_start = prev = -2
    for flat in sorted(by_flat):
        if flat != prev + 1 and run:
            blocks.append((run_start, results.coerce(run, spec.value_type, spec.vector, len(run))))
            run = []
        if not run:
            run_start = flat
        run.append(by_flat[flat])
        prev = flat
    if run:
        blocks.append((run_start, results.coerce(run, spec.value_type, spec.vector, len(run))))
    return blocks


@dataclass(frozen=True)
class FinishedStudy:
    """A study computed elsewhere, with its results in flat-order blocks."""

    spec: StudySpec
    blocks: list[tuple[int, np.ndarray]]
    registered_ms: int
    finished_ms: int
    hit_flat: int | None  # find_exact's answer, if found


def parse_curriculum(data: dict[str, Any]) -> tuple[list[FinishedStudy], list[StudySpec]]:
    """Finished studies and those still to compute, all checked before anything is written."""
    try:
        storages = [m.StudyStorage.model_validate(s) for s in data.get("storages") or []]
        actives = [
            (
                m.StudyCommon.model_validate(s),
                m.ParameterAlignedSpaceModel.model_validate(s["parameter_space"]),
            )
            for s in data.get("studies") or []
        ]
    except (ValidationError, KeyError, TypeError, AttributeError) as err:
        detail = err.errors()[0]["msg"] if isinstance(err, ValidationError) else repr(err)
        raise InvalidInput("curriculum", f"not a lite_dist2 curriculum.json: {detail}") from None
    finished = []
    for st in storages:
        spec = parse_study(registry_of(st, st.parameter_space))
        blocks = result_blocks(spec, st.results)
        hit = blocks[0][0] if spec.strategy == "find_exact" and blocks else None
        finished.append(
            FinishedStudy(
                spec,
                blocks,
                int(st.registered_timestamp.timestamp() * 1000),
                int(st.done_timestamp.timestamp() * 1000),
                hit,
            )
        )
    fresh = [parse_study(registry_of(common, space)) for common, space in actives]
    return finished, fresh
