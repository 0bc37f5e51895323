"""Converting other models' predictions and time conventions to fmmkit's velocity b_t(x).

:mod:`~fmmkit.conversion.processes` matches a model's noising process (linear / VP / VE-EDM) to an
fmmkit interpolant by a change of time; :mod:`~fmmkit.conversion.predictions` turns its prediction
(velocity, epsilon, x0, v, score, EDM denoiser) into b_t(x). Both docstrings give the formulas.
"""

from fmmkit.conversion.predictions import EDGE, PREDICTIONS, Conversion, PredictionKind
from fmmkit.conversion.processes import (
    DEFAULT_SIGMAS,
    PROCESSES,
    TIME_DIRECTIONS,
    VP_SCHEDULES,
    LinearProcess,
    Process,
    ProcessPoint,
    VEProcess,
    VPContinuous,
    VPDiscrete,
    discrete_alpha_bars,
)

__all__ = [
    "DEFAULT_SIGMAS", "EDGE", "PREDICTIONS", "PROCESSES", "TIME_DIRECTIONS", "VP_SCHEDULES", "Conversion",
    "LinearProcess", "PredictionKind", "Process", "ProcessPoint", "VEProcess", "VPContinuous", "VPDiscrete",
    "discrete_alpha_bars",
]
