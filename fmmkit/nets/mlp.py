"""``mlp``: an MLP backbone v(x, s, t, y) for vector data (2D toys, Gaussians, point sets)."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from fmmkit.core import Backbone, BuildContext
from fmmkit.core.validators import non_negative, one_of, positive
from fmmkit.hookspecs import hookimpl
from fmmkit.core.conditioning import labels_of
from fmmkit.nets.input_features import FourierInputFeatures
from fmmkit.nets.embeddings import (TIME_EMBEDDINGS, TIME_PAIRS, GuidanceEmbedding, SecondTimeEmbedding,
                                    TwoTimeEmbedding, guidance_input, second_time)


@attrs.define(frozen=True)
class MLPConfig:
    """width and depth of the hidden layers; time embedding kind and pair; time_dim features per time."""

    width: int = attrs.field(default=256, validator=positive)
    depth: int = attrs.field(default=4, validator=positive)
    time_embedding: str = attrs.field(default="sinusoidal", validator=one_of(TIME_EMBEDDINGS))
    time_pair: str = attrs.field(default="s_t", validator=one_of(TIME_PAIRS))
    time_dim: int = attrs.field(default=64, validator=positive)
    #: highest sinusoid frequency of the time features; a derivative in s or t multiplies each feature by
    #: its frequency, so semigradient Eulerian losses (EMD-sg, AYF, sCM) want a low one (e.g. 10)
    max_frequency: float = attrs.field(default=1000.0, validator=positive)
    zero_init_output: bool = True
    #: random Fourier features of the state x added to the first layer's input (0: raw x only); they let
    #: a one-step map place sharp folds (:mod:`fmmkit.nets.input_features`)
    input_features: int = attrs.field(default=0, validator=non_negative)
    #: standard deviation of those features' frequencies (cycles per unit of x)
    input_scale: float = attrs.field(default=1.0, validator=positive)


class MLP(Backbone):
    """x (B, *shape) and times -> v (B, *shape): [x ++ e(s, t) ++ e(y)] -> depth x (Linear, SiLU) -> Linear.

    With ``guidance_input`` the embedding of the guidance scale and interval (the conditioning matrix,
    :class:`fmmkit.nets.embeddings.GuidanceEmbedding`) is added to the first layer like the label's.
    """

    Config = MLPConfig

    def __init__(self, config: MLPConfig, shape: tuple[int, ...], num_classes: int | None = None,
                 guidance: bool = False) -> None:
        super().__init__()
        self.config = config
        self.shape = tuple(shape)
        dim = math.prod(self.shape)
        self.time = TwoTimeEmbedding(config.time_dim, config.time_embedding, config.time_pair, config.max_frequency)
        self.label = nn.Embedding(num_classes + 1, config.width) if num_classes else None  # last index: no label
        self.guidance = GuidanceEmbedding(config.width) if guidance else None
        self.features = FourierInputFeatures(dim, config.input_features, config.input_scale)
        self.inp = nn.Linear(self.features.dim + self.time.dim, config.width)
        self.hidden = nn.ModuleList(nn.Linear(config.width, config.width) for _ in range(config.depth - 1))
        self.out = nn.Linear(config.width, dim)
        if config.zero_init_output:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.second: SecondTimeEmbedding | None = None

    def enable_second_time(self) -> None:
        """Start-from-teacher opt-in (:meth:`fmmkit.core.Backbone.enable_second_time`): the first layer sees
        e(t, t) (the diagonal) and a zero-initialised embedding of the second time is added to its output."""
        if self.second is None:
            cfg = self.config
            self.second = SecondTimeEmbedding(cfg.time_dim, cfg.width, cfg.time_embedding, cfg.max_frequency)
            self.second.to(self.inp.weight.device)
        self.second_time_enabled = True

    @classmethod
    def build(cls, config: MLPConfig, ctx: BuildContext) -> MLP:
        return cls(config, ctx.data_shape, ctx.num_classes, ctx.guidance_input)

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        batch = x.shape[0]
        assert x.shape[1:] == self.shape, f"mlp expects points of shape {self.shape}, got {tuple(x.shape[1:])}"
        emb = (self.time(s, t) if self.second is None else self.time(t, t)).to(x.dtype)  # (B, 2 time_dim)
        h = self.inp(torch.cat([self.features(x.reshape(batch, -1)), emb], dim=1))  # (B, width)
        if self.second is not None:
            h = h + self.second(second_time(self.config.time_pair, s, t)).to(h.dtype)
        if self.label is not None:
            labels = labels_of(y)
            labels = labels if labels is not None else torch.full((batch,), self.label.num_embeddings - 1, device=x.device)
            h = h + self.label(labels).to(h.dtype)
        if self.guidance is not None:
            h = h + self.guidance(guidance_input(y, batch, x)).to(h.dtype)
        h = nn.functional.silu(h)
        for layer in self.hidden:
            h = nn.functional.silu(layer(h))
        return self.out(h).reshape(x.shape)  # (B, *shape)


@hookimpl
def register_backbones(register) -> None:  # type: ignore[no-untyped-def]
    register("mlp", MLP)
