"""Weighting of per-sample losses, chosen in a spec's nested table ``[loss.weighting]``.

Every loss computes per-sample squared residuals L_i at times (s_i, t_i) and reduces them here:

- ``none``:      mean_i L_i.
- ``adaptive``:  mean_i sg(w_i) L_i, w_i = 1 / (L_i + c)^p   (MeanFlow, 2505.13447, "adaptive loss
  weighting": p = 0 is the plain loss, p = 0.5 behaves like the pseudo-Huber loss, p = 1, MeanFlow's
  choice, like log(L + c)). Here L_i is the residual averaged over dimensions, so c is on that scale.
- ``learned``:   mean_i exp(-u(s_i, t_i)) L_i + u(s_i, t_i), with u a small network of the two times
  (EDM2, Karras et al. 2024, "learned uncertainty"; the two-time form of the self-distillation paper 2505.18825).
  At fixed L the minimiser is u(s, t) = log E[L | s, t], so the weight exp(-u) normalises the scale of
  each time pair. u has parameters: the owning loss exposes them through ``Loss.parameters()`` so that
  the trainer optimises them with the model, and saves them through ``Loss.state_dict()``.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from fmmkit.core.validators import non_negative, one_of, positive
from fmmkit.nets.embeddings import TwoTimeEmbedding

WEIGHTINGS = ("none", "adaptive", "learned")


@attrs.define(frozen=True)
class WeightingConfig:
    """kind; power p and eps c of ``adaptive``; width and time_dim of the ``learned`` weight network."""

    kind: str = attrs.field(default="none", validator=one_of(WEIGHTINGS))
    power: float = attrs.field(default=1.0, validator=non_negative)
    eps: float = attrs.field(default=1e-3, validator=positive)
    width: int = attrs.field(default=64, validator=positive)
    time_dim: int = attrs.field(default=16, validator=positive)


class LearnedLogVariance(nn.Module):
    """u(s, t): [e(s), e(t)] -> Linear -> SiLU -> Linear -> scalar, zero-initialised (weight 1 at start)."""

    def __init__(self, width: int = 64, time_dim: int = 16) -> None:
        super().__init__()
        self.embed = TwoTimeEmbedding(time_dim)
        self.hidden = nn.Linear(self.embed.dim, width)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        """(B,), (B,) -> (B,)."""
        h = nn.functional.silu(self.hidden(self.embed(s, t).float()))
        return self.out(h).squeeze(1)


class Weighting:
    """Reduces per-sample losses (B,) at times s, t (B,) to the scalar training loss."""

    def __init__(self, config: WeightingConfig = WeightingConfig()) -> None:
        self.config = config
        self.network = LearnedLogVariance(config.width, config.time_dim) if config.kind == "learned" else None

    def parameters(self) -> list[nn.Parameter]:
        """The learned weight's parameters (empty for ``none`` and ``adaptive``)."""
        return list(self.network.parameters()) if self.network is not None else []

    def __call__(self, values: Tensor, s: Tensor, t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(scalar loss, metrics) from per-sample losses ``values`` at times (s, t)."""
        assert values.ndim == 1 and s.shape == values.shape and t.shape == values.shape, (
            f"weighting needs per-sample losses and times of one shape (B,), got {tuple(values.shape)}, "
            f"{tuple(s.shape)}, {tuple(t.shape)}"
        )
        kind = self.config.kind
        if kind == "adaptive":
            w = (values.detach() + self.config.eps).pow(-self.config.power)
            return (w * values).mean(), {}
        if kind == "learned":
            assert self.network is not None
            if next(self.network.parameters()).device != values.device:
                self.network.to(values.device)  # before the first optimiser step: parameters keep identity
            u = self.network(s, t).to(values.dtype)
            return (torch.exp(-u) * values + u).mean(), {"log_variance": u.mean().detach()}
        return values.mean(), {}

    def state_dict(self) -> dict[str, Tensor]:
        """The learned weight's tensors (empty otherwise)."""
        return dict(self.network.state_dict()) if self.network is not None else {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""
        if self.network is not None:
            self.network.load_state_dict(state)
