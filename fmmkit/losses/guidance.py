"""Classifier-free guidance baked into a loss's teacher or target (Ho & Salimans 2022), in a spec's
nested table ``[loss.guidance]``, and guidance as an input of the model (variable guidance, iMF).

Labels y index classes 0..K-1; the null label K (``num_classes``) or ``y = None`` asks a model for
its unconditional output, as fmmkit's backbones do. With scale w:

- distillation (a teacher b^): the target uses the guided teacher velocity
  b^w_t(x | y) = b^_t(x | null) + w (b^_t(x | y) - b^_t(x | null));
- direct and self-distillation training (no teacher): the model's conditional velocity regresses on
  the guided conditional velocity w dI_t/dt + (1 - w) sg(v_{t,t}(I_t | null)), whose conditional mean is
  b^w_t (MeanFlow, 2505.13447 Sec. 4.2; the same target serves every loss that regresses on dI_t/dt).
  With MeanFlow's mixing coefficient kappa (official default 0.5) the target is
  w (1 - k) dI_t/dt + (1 - w (1 - k) - k) sg v_{t,t}(I_t | null) + k sg v_{t,t}(I_t | y): the same
  fixed point b^w (``scale`` is the *effective* scale, MeanFlow's omega / (1 - kappa)).
  ``label_dropout`` replaces a share of labels by the null label so that v(. | null) is learned
  too. Backbones with their own ``label_dropout`` (dit, unet) drop labels themselves: use one of the
  two, preferably this one: it drops once per batch, so every pass a loss makes (a JVP, its target)
  sees the same labels, where a backbone draws a new mask in each pass.
- ``interval = [lo, hi]``: guidance acts only at times in [lo, hi] (the guidance interval of
  Kynkaanniemi et al. 2024; MeanFlow's [t_start, t_end] is [1 - t_end, 1 - t_start] here), w = 1 elsewhere.

w = 1 is plain conditional training; the map learned is then the flow map of b^w and samples with it
directly (one network pass per step, no guidance at sampling time).

**Variable guidance** (``scale = [lo, hi]``): w is drawn per sample (``scale_distribution``), and with
the interval it becomes an input of the model through the *conditioning matrix*: y of shape (B, 4) =
[label, w, interval start, interval end] (:func:`condition`) instead of labels (B,). Backbones built
with ``guidance_input`` embed (1 - 1/w, start, end) (iMF, 2512.02012, embeds 1 - 1/w); one trained model
then samples at any w chosen at inference. Every loss, sampler and derivative passes y through
unchanged, so variable guidance works with any flow-map loss.

Autoguidance (Karras et al. 2024, used for distillation in AYF 2506.14603): b = b_guide + w (b - b_guide)
with a weaker model b_guide (:class:`AutoGuided`).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import Tensor

from fmmkit.core import VelocityField
from fmmkit.core.conditioning import (  # noqa: F401 - one home (core), re-exported for the losses
    END,
    LABEL,
    SCALE,
    START,
    condition,
    guidance_of,
    is_condition,
    labels_of,
    null_condition,
    with_labels,
)
from fmmkit.core.validators import SpecValueError, non_negative, one_of, unit_interval

SCALE_DISTRIBUTIONS = ("uniform", "log_uniform")
INTERVAL_SAMPLINGS = ("fixed", "random")


def _check_scale(instance: Any, attribute: attrs.Attribute[Any], value: float | list[float]) -> None:
    if isinstance(value, list):
        if len(value) != 2 or value[0] > value[1] or value[0] < 0:
            raise SpecValueError(attribute.name, f"must be a number >= 0 or a range [lo, hi] with 0 <= lo <= hi, got {value!r}")
    elif value < 0:
        raise SpecValueError(attribute.name, f"must be >= 0, got {value!r}")


def _check_interval(instance: Any, attribute: attrs.Attribute[Any], value: list[float]) -> None:
    if len(value) != 2 or not 0 <= value[0] <= value[1] <= 1:
        raise SpecValueError(attribute.name, f"must be [start, end] with 0 <= start <= end <= 1, got {value!r}")


@attrs.define(frozen=True)
class GuidanceConfig:
    """scale: the guidance weight w (1 = none), or a range [lo, hi] (variable guidance: w drawn per
    sample with ``scale_distribution`` and given to the model); label_dropout: share of labels set to
    null in training; kappa: MeanFlow's mixing coefficient in the regression target (0: none);
    interval: [start, end] of the times where guidance acts; interval_sampling: "fixed", or "random"
    (iMF: start ~ U[0, 1/2], end ~ U[1/2, 1] per sample, an input of the model)."""

    scale: float | list[float] = attrs.field(default=1.0, validator=_check_scale)
    scale_distribution: str = attrs.field(default="uniform", validator=one_of(SCALE_DISTRIBUTIONS))
    label_dropout: float = attrs.field(default=0.0, validator=unit_interval)
    kappa: float = attrs.field(default=0.0, validator=non_negative)
    interval: list[float] = attrs.field(factory=lambda: [0.0, 1.0], validator=_check_interval)
    interval_sampling: str = attrs.field(default="fixed", validator=one_of(INTERVAL_SAMPLINGS))

    def __attrs_post_init__(self) -> None:
        if self.kappa >= 1:
            raise SpecValueError("kappa", f"must be < 1 (the target divides by 1 - kappa), got {self.kappa}")
        if self.variable and self.scale_distribution == "log_uniform" and self.scale[0] <= 0:  # type: ignore[index]
            raise SpecValueError("scale", f"log_uniform needs lo > 0, got {self.scale!r}")
        if self.interval_sampling == "random" and not self.variable:
            raise SpecValueError("interval_sampling", "\"random\" intervals are an input of the model, for variable "
                                 "guidance only: set scale = [lo, hi], or interval_sampling = \"fixed\" for one scale")

    @property
    def variable(self) -> bool:
        """Whether w is drawn per sample and given to the model (``scale = [lo, hi]``)."""
        return isinstance(self.scale, list)

    @property
    def guides(self) -> bool:
        """Whether guidance can change a target (w != 1 somewhere)."""
        return self.variable or self.scale != 1.0

    def draw(self, n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(w, start, end), each (n,) float32: per-sample scales and intervals of variable guidance."""
        assert self.variable
        lo, hi = self.scale  # type: ignore[misc]
        u = torch.rand(n, device=device)
        if self.scale_distribution == "log_uniform":
            w = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        else:
            w = lo + u * (hi - lo)
        a, b = self.interval
        if self.interval_sampling == "random":
            mid = (a + b) / 2
            start = a + (mid - a) * torch.rand(n, device=device)
            end = mid + (b - mid) * torch.rand(n, device=device)
        else:
            start, end = torch.full((n,), a, device=device), torch.full((n,), b, device=device)
        return w, start, end


def drop_labels(y: Tensor | None, p: float, null_label: int | None, rows: str = "all") -> Tensor | None:
    """y with labels replaced by ``null_label``: each with probability p (``rows = "all"``), or the
    first k rows with k ~ Binomial(B, p) (``rows = "first"``: MeanFlow / iMF's ``cond_drop``, which
    puts the dropped labels on the s = t rows that lead the batch). Global generator."""
    if y is None or p <= 0 or null_label is None:
        return y
    labels = labels_of(y)
    assert labels is not None
    drop = torch.rand(labels.shape, device=labels.device) < p
    if rows == "first":
        drop = torch.arange(labels.shape[0], device=labels.device) < drop.sum()
    return with_labels(y, torch.where(drop, torch.full_like(labels, null_label), labels))


def effective_scale(y: Tensor | None, t: Tensor, config: GuidanceConfig) -> Tensor | float:
    """Per-sample w at times t (B,): the conditioning matrix's w (or ``config.scale``), set to 1 outside
    the interval; a float when it is the same for every sample."""
    g = guidance_of(y)
    if g is not None:
        inside = (t >= g[:, 1].to(t.dtype)) & (t <= g[:, 2].to(t.dtype))
        return torch.where(inside, g[:, 0].to(t.dtype), torch.ones_like(t))
    if config.variable:  # no conditioning matrix: unlabelled data, nothing to guide
        return 1.0
    scale = float(config.scale)  # type: ignore[arg-type]
    a, b = config.interval
    if a <= 0 and b >= 1:
        return scale
    inside = (t >= a) & (t <= b)
    return torch.where(inside, torch.full_like(t, scale), torch.ones_like(t))


def is_guided(y: Tensor | None, scale: Tensor | float) -> bool:
    """Whether guidance changes anything: labels given and w != 1 (for some sample)."""
    if y is None:
        return False
    if isinstance(scale, Tensor):
        return bool((scale != 1).any())
    return scale != 1.0


def _per_sample(scale: Tensor | float, like: Tensor) -> Tensor | float:
    if isinstance(scale, Tensor):
        return scale.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
    return scale


def guided_velocity(field: VelocityField, x: Tensor, t: Tensor, y: Tensor | None, scale: Tensor | float) -> Tensor:
    """b^w_t(x | y) = b_t(x | null) + w (b_t(x | y) - b_t(x | null)); b_t(x | y) when unguided.

    ``scale`` is a float or per-sample (B,); rows whose label is already null get b_t(x | null) either way.
    """
    conditional = field.velocity(x, t, y)
    if not is_guided(y, scale):
        return conditional
    unconditional = field.velocity(x, t, None)
    return unconditional + _per_sample(scale, x) * (conditional - unconditional)


def guided_target(
    dx: Tensor,
    y: Tensor | None,
    scale: Tensor | float,
    null_label: int | None,
    unconditional: Tensor,
    conditional: Tensor | None = None,
    kappa: float = 0.0,
) -> Tensor:
    """The guided regression target on labelled rows, dI_t/dt on null rows:
    w (1 - k) dx + (1 - w (1 - k) - k) sg(v(x | null)) + k sg(v(x | y)) (k = kappa; ``conditional``
    is v(x | y), needed when k > 0)."""
    w = _per_sample(scale, dx)
    omega = w * (1 - kappa)
    guided = omega * dx + (1 - omega - kappa) * unconditional
    if kappa > 0:
        assert conditional is not None, "kappa > 0 needs the model's conditional velocity"
        guided = guided + kappa * conditional
    labels = labels_of(y)
    if labels is None or null_label is None:
        return guided
    labelled = (labels != null_label).reshape(-1, *([1] * (dx.ndim - 1)))
    return torch.where(labelled, guided, dx)


class AutoGuided:
    """Autoguidance: b_t(x | y) = g_t(x | y) + w (b_t(x | y) - g_t(x | y)) with a weaker model g
    (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"; AYF 2506.14603
    distils with it). w = 1 is the teacher itself."""

    def __init__(self, teacher: VelocityField, guide: VelocityField, weight: float) -> None:
        self.teacher, self.guide, self.weight = teacher, guide, weight

    def velocity(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        strong = self.teacher.velocity(x, t, y)
        if self.weight == 1.0:
            return strong
        weak = self.guide.velocity(x, t, y)
        return weak + self.weight * (strong - weak)
