"""``torch_module`` teacher: any importable torch module, its prediction converted to fmmkit's velocity.

    [teacher]
    kind = "torch_module"
    factory = "my_pkg.models:build"       # "module.path:attribute" returning an nn.Module
    kwargs = { channels = 64 }            # keyword arguments of the factory
    weights = "ckpt/model.safetensors"    # local weights (a .pt/.ckpt only with allow_pickle = true)
    prediction = "epsilon"                # velocity, epsilon, x0, v, score, edm_denoiser
    process = "vp"                        # linear, vp, ve, edm (and their parameters below)

The module is called as ``module(x, time)`` or ``module(x, time, y)``
(:mod:`fmmkit.external.converted`); what it predicts under which process is converted to
b_t(x) in fmmkit's convention (noise at t = 0, data at t = 1) by :mod:`fmmkit.conversion`, whose
docstrings give every formula and time change. The teacher's process fixes the interpolant the
student trains on (``linear`` -> ``linear``; ``vp``, ``ve``, ``edm`` -> ``trig``). The data must be
in the space the module was trained in (pixels in [-1, 1], or latents scaled as in its training).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

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
from fmmkit.core import BuildContext, Component
from fmmkit.core.validators import SpecValueError, at_least, non_negative, one_of, positive
from fmmkit.external.converted import ConvertedVelocity, ModuleCall
from fmmkit.external.modules import ModuleLoadError, ModuleSource, build_module, frozen
from fmmkit.hookspecs import hookimpl

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


@attrs.define(frozen=True, kw_only=True, slots=False)
class TorchModuleTeacherConfig(ModuleSource, ConversionFields, CallFields):
    """factory, kwargs, weights, weights_prefix, allow_pickle (the module); prediction, process and its
    parameters (the conversion); input_scale, output_scale, learned_variance, null_label (the call);
    guidance: classifier-free guidance weight w of the teacher (1 = none)."""

    guidance: float = attrs.field(default=1.0, validator=non_negative)


def check_teacher(teacher: ConvertedVelocity, ctx: BuildContext, where: str) -> None:
    """One probe pass at t = 1/2 on zeros of the data's shape: a wrong signature or output shape is a ModuleLoadError."""
    shape = tuple(ctx.data_shape)
    x = torch.zeros((2, *shape), device=next(iter(teacher.parameters()), torch.zeros(())).device)
    y = torch.zeros(2, dtype=torch.long, device=x.device) if ctx.num_classes else None
    try:
        with torch.no_grad():
            teacher.unguided_velocity(x, torch.full((2,), 0.5, device=x.device), y)
    except ModuleLoadError:
        raise
    except Exception as exc:
        labels = ", y" if y is not None else ""
        raise ModuleLoadError(
            f"{where}: calling the module as module(x, time{labels}) on data of shape {shape} failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); check that it was built for "
            "this data (channels, size, classes) and takes (x, time[, y]), or wrap it in a factory that does") from None


class TorchModuleTeacher(Component):
    """Builds a frozen :class:`ConvertedVelocity` from a factory, weights and the conversion fields."""

    Config = TorchModuleTeacherConfig

    @classmethod
    def build(cls, config: TorchModuleTeacherConfig, ctx: BuildContext) -> ConvertedVelocity:
        module = frozen(build_module(config, "teacher"))
        teacher = ConvertedVelocity(module, config.to_conversion(), config.to_call("teacher", ctx.num_classes),
                                    config.guidance)
        check_teacher(teacher, ctx, "teacher")
        return teacher


def conversion_fields(config: Any) -> dict[str, Any]:
    """The conversion keys of a config, as a dict (for exported configs and student backbones)."""
    return {f.name: getattr(config, f.name) for f in attrs.fields(ConversionFields)}


@hookimpl
def register_teachers(register) -> None:  # type: ignore[no-untyped-def]
    register("torch_module", TorchModuleTeacher)
