"""Classifier-free guidance baked into a loss's teacher or target (Ho & Salimans 2022), in a spec's
nested table ``[loss.guidance]``.

Labels y index classes 0..K-1; the null label K (``num_classes``) or ``y = None`` asks a model for
its unconditional output, as fmmkit's backbones do. With scale w:

- distillation (a teacher b^): the target uses the guided teacher velocity
  b^w_t(x | y) = b^_t(x | null) + w (b^_t(x | y) - b^_t(x | null));
- direct and self-distillation training (no teacher): the model's conditional velocity regresses on
  the guided conditional velocity w dI_t/dt + (1 - w) sg(v_{t,t}(I_t | null)), whose conditional mean is
  b^w_t (MeanFlow, 2505.13447 Sec. 4.2; the same target serves every loss that regresses on dI_t/dt).
  ``label_dropout`` replaces a share of labels by the null label so that v(. | null) is learned
  too. Backbones with their own ``label_dropout`` (dit, unet) drop labels themselves: use one of the
  two, preferably this one: it drops once per batch, so every pass a loss makes (a JVP, its target)
  sees the same labels, where a backbone draws a new mask in each pass.

w = 1 is plain conditional training; the map learned is then the flow map of b^w and samples with it
directly (one network pass per step, no guidance at sampling time).
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from fmmkit.core import VelocityField
from fmmkit.core.validators import non_negative, unit_interval


@attrs.define(frozen=True)
class GuidanceConfig:
    """scale: the guidance weight w (1 = none); label_dropout: share of labels set to null in training."""

    scale: float = attrs.field(default=1.0, validator=non_negative)
    label_dropout: float = attrs.field(default=0.0, validator=unit_interval)


def drop_labels(y: Tensor | None, p: float, null_label: int | None) -> Tensor | None:
    """y with each label replaced by ``null_label`` with probability p (global generator)."""
    if y is None or p <= 0 or null_label is None:
        return y
    drop = torch.rand(y.shape, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_label), y)


def is_guided(y: Tensor | None, scale: float) -> bool:
    """Whether guidance changes anything: labels given and w != 1."""
    return y is not None and scale != 1.0


def guided_velocity(field: VelocityField, x: Tensor, t: Tensor, y: Tensor | None, scale: float) -> Tensor:
    """b^w_t(x | y) = b_t(x | null) + w (b_t(x | y) - b_t(x | null)); b_t(x | y) when unguided.

    Rows whose label is already null get b_t(x | null) either way.
    """
    conditional = field.velocity(x, t, y)
    if not is_guided(y, scale):
        return conditional
    unconditional = field.velocity(x, t, None)
    return unconditional + scale * (conditional - unconditional)


def guided_regression_target(
    model: VelocityField, x: Tensor, t: Tensor, dx: Tensor, y: Tensor | None, scale: float, null_label: int | None
) -> Tensor:
    """w dI_t/dt + (1 - w) sg(v_{t,t}(x | null)) on labelled rows; dI_t/dt on null rows or when unguided."""
    if not is_guided(y, scale):
        return dx
    assert y is not None
    with torch.no_grad():
        unconditional = model.velocity(x, t, None)
    guided = scale * dx + (1 - scale) * unconditional
    if null_label is None:
        return guided
    labelled = (y != null_label).reshape(-1, *([1] * (dx.ndim - 1)))
    return torch.where(labelled, guided, dx)
