"""A user's runner: the Rosenbrock function, vectorised, with its constants from the study.

cd examples/custom && ld2 run rosenbrock.json --import rosenbrock  (found in the current directory)
"""

import numpy as np

import ld2


@ld2.runner("rosenbrock", vectorized=True)
def rosenbrock(x: np.ndarray, y: np.ndarray, a: float = 1.0, b: float = 100.0) -> np.ndarray:
    return (a - x) ** 2 + b * (y - x * x) ** 2
