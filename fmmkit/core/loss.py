"""Losses: plain callables ``loss(model, batch, teacher=..., step=...) -> LossOutput`` (as in EDM).

A loss is built with its config and the run's interpolant; it draws its own times and noise from
torch's global generator (seeded by the trainer and saved in checkpoints).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from fmmkit.core.component import BuildContext, Component
from fmmkit.core.data import Batch
from fmmkit.core.flow_map import FlowMap
from fmmkit.core.interpolant import Interpolant
from fmmkit.core.velocity import VelocityField


class LossBuildError(ValueError):
    """A loss cannot run with the model or teacher it was given."""


@dataclass
class LossOutput:
    """The scalar training loss and named metrics (floats or 0-d tensors, logged as floats)."""

    loss: Tensor
    metrics: dict[str, float | Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.loss.ndim == 0, f"loss must be a scalar, got shape {tuple(self.loss.shape)}"


class Loss(Component, ABC):
    """A training objective for a flow map.

    Class flags read by the spec layer and trainer: ``requires_teacher`` (a distillation loss needs a
    frozen teacher velocity), ``needs_forward_ad`` (the loss takes a ``torch.func.jvp`` through the
    model), ``trains_flow_map`` (False for a velocity-only loss such as flow matching), ``needs_data``
    (False for a data-free loss, which reads only the shape, dtype and labels of its batches: a spec
    may then omit ``[data]`` or use ``kind = "prior"``) and ``default_sampler`` (the registered sampler
    that draws its multi-step samples: ``consistency`` for losses that learn only X_{s,1}).
    """

    requires_teacher: ClassVar[bool] = False
    needs_forward_ad: ClassVar[bool] = False
    #: False for losses that train only the velocity b_t = v_{t,t} (a teacher), not the two-time map.
    trains_flow_map: ClassVar[bool] = True
    #: False for losses that never look at data points (FreeFlow: every state comes from the prior).
    needs_data: ClassVar[bool] = True
    #: the sampler for K-step samples of this loss's model ("flow_map": K jumps X_{t_k, t_{k+1}}).
    default_sampler: ClassVar[str] = "flow_map"

    def __init__(self, config: Any, interpolant: Interpolant) -> None:
        self.config = config
        self.interpolant = interpolant

    @classmethod
    def build(cls, config: Any, ctx: BuildContext) -> Loss:
        assert ctx.interpolant is not None, "losses are built after the interpolant"
        return cls(config, ctx.interpolant)

    @abstractmethod
    def __call__(
        self, model: FlowMap, batch: Batch, *, teacher: VelocityField | None = None, step: int = 0
    ) -> LossOutput:
        """The loss of ``model`` on a data batch at training step ``step``."""

    def check_model(self, model: FlowMap, teacher: VelocityField | None = None) -> None:
        """Raise LossBuildError when this loss cannot run with ``model`` or ``teacher``."""
        name = type(self).__name__
        if self.needs_forward_ad and not model.supports_forward_ad:
            raise LossBuildError(
                f"loss {name} takes forward-mode derivatives but backbone "
                f"{type(model.backbone).__name__} does not support torch.func.jvp; "
                "choose a backbone (or attention backend) with forward-mode AD, or set derivative = \"finite_difference\""
            )
        if self.requires_teacher and teacher is None:
            raise LossBuildError(f"loss {name} distills a teacher: add a [teacher] table with run = \"RUN_DIR\"")

    def begin_step(self, step: int) -> None:
        """Called before each optimiser step, outside a compiled loss: per-step state the loss reads as
        tensors (a curriculum's factor), so that a compiled loss does not specialise on the step."""

    def on_step_end(self, model: FlowMap, step: int) -> None:
        """Called after each optimiser step (EMA teachers, progressive rounds)."""

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters the loss owns (a learned loss weight), optimised with the model's;
        empty by default. Their values are part of :meth:`state_dict`."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers the loss carries between steps (an EMA or frozen teacher, a round
        counter), saved in checkpoints so that a resumed run continues exactly; empty by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
