"""Spec field groups shared by the modules fmmkit converts (``torch_module`` teacher and student backbone):
what the network predicts under which process, and how it is called."""

from __future__ import annotations

import attrs

from fmmkit.conversion import (
    DEFAULT_SIGMAS,
    PREDICTIONS,
    PROCESSES,
    TIME_DIRECTIONS,
    VP_SCHEDULES,
    Conversion,
    LinearProcess,
    Process,
    VEProcess,
    VPContinuous,
    VPDiscrete,
    discrete_alpha_bars,
)
from fmmkit.core.validators import SpecValueError, at_least, non_negative, one_of, positive
from fmmkit.external.converted import ModuleCall

#: process-specific keys, and the processes they belong to
PROCESS_KEYS: dict[str, tuple[str, ...]] = {
    "time_direction": ("linear",),
    "time": ("vp",), "schedule": ("vp",), "num_timesteps": ("vp",), "beta_start": ("vp",), "beta_end": ("vp",),
    "sigma_min": ("ve", "edm"), "sigma_max": ("ve", "edm"),
}


@attrs.define(frozen=True, kw_only=True, slots=False)
class ConversionFields:
    """What the network predicts under which process (see :mod:`fmmkit.conversion`).

    prediction: velocity, epsilon, x0, v, score or edm_denoiser. process: linear, vp, ve or edm.
    time_direction (linear, required): "noise_at_1" (diffusers, SD3, rectified flow as SD3 trains it) or
    "noise_at_0" (fmmkit, Lipman et al.). time (vp): "discrete" (an N-step table, the network takes the
    timestep index) or "continuous" (tau in [0, 1]). schedule (vp): linear, scaled_linear (discrete only)
    or cosine. num_timesteps, beta_start, beta_end (vp): the N-step schedule (DDPM: 1000, 1e-4, 0.02;
    latent diffusion: 1000, 0.00085, 0.012 scaled_linear). sigma_min, sigma_max (ve, edm): the sigma range
    (defaults: ve 0.01-50, edm 0.002-80). sigma_data: EDM's (edm_denoiser). time_scale: the network's time
    is time_scale times the natural time (tau, or sigma for ve/edm; diffusers flow matching: 1000).
    """

    prediction: str = attrs.field(validator=one_of(PREDICTIONS))
    process: str = attrs.field(validator=one_of(PROCESSES))
    time_direction: str | None = attrs.field(default=None, validator=one_of(TIME_DIRECTIONS))
    time: str | None = attrs.field(default=None, validator=one_of(("discrete", "continuous")))
    schedule: str | None = attrs.field(default=None, validator=one_of(VP_SCHEDULES))
    num_timesteps: int | None = attrs.field(default=None, validator=at_least(2))
    beta_start: float | None = attrs.field(default=None, validator=positive)
    beta_end: float | None = attrs.field(default=None, validator=positive)
    sigma_min: float | None = attrs.field(default=None, validator=positive)
    sigma_max: float | None = attrs.field(default=None, validator=positive)
    sigma_data: float = attrs.field(default=0.5, validator=positive)
    time_scale: float = attrs.field(default=1.0, validator=positive)

    def __attrs_post_init__(self) -> None:
        for key, processes in PROCESS_KEYS.items():
            if getattr(self, key) is not None and self.process not in processes:
                raise SpecValueError(key, f"applies to process = {' or '.join(repr(p) for p in processes)}, "
                                          f"not {self.process!r}; remove it")
        if self.process == "linear" and self.time_direction is None:
            raise SpecValueError("time_direction", "required for process = \"linear\": \"noise_at_1\" (diffusers, SD3) "
                                                   "or \"noise_at_0\" (fmmkit, Lipman et al.)")
        if self.prediction == "edm_denoiser" and self.process not in ("ve", "edm"):
            raise SpecValueError("prediction", "edm_denoiser is EDM's preconditioning of a VE model: use process = \"edm\"")
        if self.time == "continuous" and self.schedule == "scaled_linear":
            raise SpecValueError("schedule", "scaled_linear is a discrete table; use time = \"discrete\" or schedule = \"linear\"")
        lo, hi = self.sigma_min, self.sigma_max
        if lo is not None and hi is not None and not lo < hi:
            raise SpecValueError("sigma_max", f"must be > sigma_min = {lo}, got {hi}")

    def to_process(self) -> Process:
        """The :class:`fmmkit.conversion.Process` these fields describe."""
        if self.process == "linear":
            return LinearProcess(self.time_direction or "noise_at_1", self.time_scale)  # type: ignore[arg-type]
        if self.process == "vp":
            schedule = self.schedule or "linear"
            n = self.num_timesteps or 1000
            start = self.beta_start if self.beta_start is not None else 1e-4
            end = self.beta_end if self.beta_end is not None else 0.02
            if (self.time or "discrete") == "discrete":
                return VPDiscrete(discrete_alpha_bars(schedule, n, start, end))  # type: ignore[arg-type]
            return VPContinuous(schedule, start, end, n, time_scale=self.time_scale)  # type: ignore[arg-type]
        default_lo, default_hi = DEFAULT_SIGMAS[self.process]
        return VEProcess(self.sigma_min or default_lo, self.sigma_max or default_hi, self.time_scale, self.process)

    def to_conversion(self) -> Conversion:
        """The :class:`fmmkit.conversion.Conversion` of these fields."""
        return Conversion(self.to_process(), self.prediction, self.sigma_data)  # type: ignore[arg-type]


@attrs.define(frozen=True, kw_only=True, slots=False)
class CallFields:
    """input_scale / output_scale: the module sees input_scale * z and its output is multiplied by output_scale;
    learned_variance: the module returns 2C channels (prediction, variance), keep the first C;
    null_label: the module's label for "no class" (DiT: 1000; unset: called without labels for those rows)."""

    input_scale: float = attrs.field(default=1.0, validator=positive)
    output_scale: float = 1.0
    learned_variance: bool = False
    null_label: int | None = attrs.field(default=None, validator=non_negative)

    def to_call(self, where: str, num_classes: int | None) -> ModuleCall:
        return ModuleCall(where, self.input_scale, self.output_scale, self.learned_variance, num_classes, self.null_label)
