"""Exponential moving averages of the weights, used for sampling and evaluation by default.

After optimiser step k (every ``ema.every`` steps) each average theta_ema <- beta theta_ema + (1 - beta) theta
with beta either a fixed decay (warmed up: beta_k = min(decay, (1 + k) / (10 + k)) at the k-th update, unless
``decay_warmup = false``, so that no share decay^k of the initial weights survives), or EDM's half-life form (Karras et al. 2022, training loop):
  beta = 0.5 ** (B * every / h_k),  h_k = min(h, rampup * samples seen)  (rampup = 0: h_k = h),
so the average forgets half its weight every h training samples. Buffers are copied, not averaged.
A run writes each average as ``ema-LABEL.safetensors`` next to the raw ``model.safetensors``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fmmkit.runs.layout import RAW, ema_labels, sampling_label, weights_file
from fmmkit.spec.schema import EMAConfig

__all__ = ["EMA", "RAW", "ema_labels", "sampling_label", "weights_file"]


class EMA:
    """The moving averages of one model (shadow copies of its trainable parameters)."""

    def __init__(self, model: nn.Module, config: EMAConfig, batch_size: int) -> None:
        self.config = config
        self.batch_size = batch_size
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.labels = ema_labels(config)
        self.decays: list[float | None] = [*config.decays, *([None] * len(config.half_lives))]
        self.half_lives: list[float | None] = [*([None] * len(config.decays)), *config.half_lives]
        params = self._params(model)
        self.shadows = [[p.detach().clone() for p in params] for _ in self.labels]

    def _params(self, model: nn.Module) -> list[Tensor]:
        named = dict(model.named_parameters())
        return [named[n] for n in self.names]

    def beta(self, index: int, samples_seen: int) -> float:
        """The decay of average ``index`` for the update after ``samples_seen`` training samples."""
        decay = self.decays[index]
        if decay is not None:
            if not self.config.decay_warmup:
                return decay
            k = samples_seen // (self.batch_size * self.config.every) - 1  # updates before this one
            return min(decay, (1 + k) / (10 + k))
        half_life = self.half_lives[index]
        assert half_life is not None
        if self.config.rampup > 0:
            half_life = min(half_life, self.config.rampup * samples_seen)
        return 0.5 ** (self.batch_size * self.config.every / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, samples_seen: int) -> None:
        """Fold the current weights in after optimiser step ``step`` (1-based), every ``every`` steps."""
        if not self.labels or step % self.config.every:
            return
        params = [p.detach() for p in self._params(model)]
        for i, shadow in enumerate(self.shadows):
            weight = 1.0 - self.beta(i, samples_seen)
            for s, p in zip(shadow, params):
                s.lerp_(p, weight)

    def state_dict(self, label: str, model: nn.Module) -> dict[str, Tensor]:
        """A model state dict with average ``label`` in place of the trainable parameters."""
        shadow = dict(zip(self.names, self.shadows[self.labels.index(label)]))
        return {k: shadow.get(k, v) for k, v in model.state_dict().items()}

    @torch.no_grad()
    def load_state_dict(self, label: str, state: dict[str, Tensor]) -> None:
        """Restore average ``label`` from :meth:`state_dict` (a shard of it under FSDP)."""
        from fmmkit.training.distributed import local

        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"average {label} lacks {missing[:3]}")
        for s, n in zip(self.shadows[self.labels.index(label)], self.names):
            local(s).copy_(state[n])
