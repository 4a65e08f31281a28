"""Finding the study a request names (by id or by name), for every route that takes one."""

from __future__ import annotations

from ld2.core.errors import InvalidInput, NotFound
from ld2.store.base import StudyState, Table

NOT_FOUND = "Study not found."


async def find_study(table: Table, study_id: str | None, name: str | None) -> StudyState:
    """Exactly one of `study_id` and `name`; lite_dist2's words when there is no such study."""
    if (study_id is None) == (name is None):
        raise InvalidInput("study_id", "give exactly one of study_id and name")
    try:
        return await table.get_study(study_id=study_id, name=name)
    except NotFound:
        raise NotFound(NOT_FOUND) from None
