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

from fmmkit.core import BuildContext, Component
from fmmkit.core.validators import non_negative
from fmmkit.external.converted import ConvertedVelocity
from fmmkit.external.fields import CallFields, ConversionFields
from fmmkit.external.modules import ModuleSource, build_module, frozen
from fmmkit.hookspecs import hookimpl


@attrs.define(frozen=True, kw_only=True, slots=False)
class TorchModuleTeacherConfig(ModuleSource, ConversionFields, CallFields):
    """factory, kwargs, weights, weights_prefix, allow_pickle (the module); prediction, process and its
    parameters (the conversion); input_scale, output_scale, learned_variance, null_label (the call);
    guidance: classifier-free guidance weight w of the teacher (1 = none)."""

    guidance: float = attrs.field(default=1.0, validator=non_negative)


class TorchModuleTeacher(Component):
    """Builds a frozen :class:`ConvertedVelocity` from a factory, weights and the conversion fields."""

    Config = TorchModuleTeacherConfig

    @classmethod
    def interpolant_kind(cls, config: TorchModuleTeacherConfig) -> str:
        """The fmmkit interpolant of the teacher's process: the student trains on it."""
        return config.to_process().interpolant_kind

    @classmethod
    def student_model(cls, config: TorchModuleTeacherConfig) -> dict[str, Any]:
        """The [model] table of a student made from the teacher's own module (``init_from = "teacher"``): the
        ``torch_module`` backbone with the teacher's factory, conversion and call, its weights loaded at start."""
        from fmmkit.nets.torch_module import TorchModuleBackboneConfig

        keys = {f.name for f in attrs.fields(TorchModuleBackboneConfig)} - {"weights", "forward_ad"}
        table = {k: v for k, v in attrs.asdict(config).items() if k in keys and v is not None}
        return {"kind": "torch_module", **table}

    @classmethod
    def build(cls, config: TorchModuleTeacherConfig, ctx: BuildContext) -> ConvertedVelocity:
        module = frozen(build_module(config, "teacher"))
        teacher = ConvertedVelocity(module, config.to_conversion(), config.to_call("teacher", ctx.num_classes),
                                    config.guidance)
        teacher.check(ctx.data_shape, ctx.num_classes)
        return teacher


@hookimpl
def register_teachers(register) -> None:  # type: ignore[no-untyped-def]
    register("torch_module", TorchModuleTeacher)
