"""A lite_dist2 trial upload checked against its study: pure, no I/O.

Any client may send anything: the trial's space must be a part of the study's grid, and its
results must be of the study's types, one per point, at the trial's own points.
"""

from __future__ import annotations

import numpy as np

from ld2.core import models as m
from ld2.core import results
from ld2.core.errors import InvalidInput
from ld2.core.study import StudySpec
from ld2.core.subspace import trial_range


def check_upload(spec: StudySpec, trial: m.TrialModel) -> tuple[int, int, np.ndarray]:
    """The trial's first flat index, its point count and its results typed as the study's."""
    start, count = trial_range(spec.space, trial.parameter_space, "trial.parameter_space")
    if trial.results is None:
        raise InvalidInput("trial.results", "a registered trial needs its results")
    if trial.result_type != spec.registry.result_type:
        raise InvalidInput("trial.result_type", f"the study's is {spec.registry.result_type!r}")
    if trial.result_value_type != spec.value_type:
        raise InvalidInput("trial.result_value_type", f"the study's is {spec.value_type!r}")
    try:
        typed = results.from_mappings(
            spec.space, start, count, trial.results, spec.value_type, spec.vector
        )
    except InvalidInput as err:
        raise err.under("trial") from None
    return start, count, typed
