"""``torch_module`` backbone: a student built from a ``torch_module`` teacher's own module, trained as a flow map.

The student is the teacher's network with the teacher's conversion (:mod:`fmmkit.conversion`)
around it, so v_{t,t}(x) = b_t(x) is the teacher's velocity; the flow map's second time reaches the
module through the protocol below, and ``[model] init_from = "teacher"`` starts it from the teacher's
weights. Then v_{s,t}(x) = A_t x + B_t p(c_t x, m(t), y; t - s), the prediction p converted at time t.

The protocol a module implements to opt in (fmmkit's own modules follow it):

1. its ``forward(x, time[, y], second_time=None)`` accepts a keyword ``second_time``: a (B,) tensor, fmmkit's
   t - s (0 on the diagonal, in [-1, 1]), which it embeds with a *new* embedding (e.g. sinusoidal features
   then an MLP) added to its time conditioning;
2. the last layer of that embedding is zero-initialised, so that, as built, the output does not depend on
   ``second_time`` at all (fmmkit checks this on a probe batch before training);
3. optionally an ``enable_second_time()`` method that creates the embedding (so the plain module keeps the
   teacher's exact parameter set); fmmkit calls it before loading the teacher's weights. Without it the
   embedding exists from construction, and its parameters are the ones the teacher's weights lack.
"""

from __future__ import annotations

import inspect

import attrs
import torch
from torch import Tensor

from fmmkit.core import Backbone, BuildContext
from fmmkit.core.validators import one_of
from fmmkit.external.converted import ConvertedVelocity
from fmmkit.external.fields import CallFields, ConversionFields
from fmmkit.external.modules import ModuleLoadError, ModuleSource, build_module
from fmmkit.hookspecs import hookimpl


@attrs.define(frozen=True, kw_only=True, slots=False)
class TorchModuleBackboneConfig(ModuleSource, ConversionFields, CallFields):
    """The teacher's module (factory, kwargs, optional weights ...), conversion and call keys, as for the
    ``torch_module`` teacher; forward_ad: whether torch.func.jvp may run through the module ("auto": yes)."""

    forward_ad: str = attrs.field(default="auto", validator=one_of(("auto", "off")))


def accepts_second_time(module: torch.nn.Module) -> bool:
    """Whether the module's forward takes ``second_time`` (by name or **kwargs)."""
    params = inspect.signature(module.forward).parameters.values()
    return any(p.name == "second_time" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class TorchModuleBackbone(Backbone):
    """v_{s,t}(x) of a converted module (module docstring); before ``enable_second_time`` it ignores s."""

    Config = TorchModuleBackboneConfig

    def __init__(self, config: TorchModuleBackboneConfig, shape: tuple[int, ...], num_classes: int | None) -> None:
        super().__init__()
        self.config = config
        self.shape = tuple(shape)
        self.module = build_module(config, "model")
        self.conversion = config.to_conversion()
        self.call = config.to_call("model", num_classes)
        ConvertedVelocity(self.module, self.conversion, self.call).check(self.shape, num_classes)
        self.second_time_enabled = False
        self.supports_forward_ad = config.forward_ad == "auto"

    @classmethod
    def build(cls, config: TorchModuleBackboneConfig, ctx: BuildContext) -> TorchModuleBackbone:
        return cls(config, ctx.data_shape, ctx.num_classes)

    def enable_second_time(self) -> None:
        """Opt in (:meth:`fmmkit.core.Backbone.enable_second_time`) through the module's protocol."""
        if hasattr(self.module, "enable_second_time"):
            self.module.enable_second_time()
        if not accepts_second_time(self.module):
            raise ModuleLoadError(f"model.factory: {type(self.module).__name__}.forward takes no second_time keyword, so "
                                  "a student cannot learn the flow map's second time through it; implement the protocol "
                                  "of fmmkit.nets.torch_module")
        self.second_time_enabled = True

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        assert x.shape[1:] == self.shape, f"torch_module expects points of shape {self.shape}, got {tuple(x.shape[1:])}"
        second = (t - s) if self.second_time_enabled else None
        return self.conversion.velocity(lambda z, m: self.call(self.module, z, m, y, second), x, t)


@hookimpl
def register_backbones(register) -> None:  # type: ignore[no-untyped-def]
    register("torch_module", TorchModuleBackbone)
