"""The base of the image backbones (unet, dit): their shared config keys and setup."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import attrs
from torch import Tensor

from fmmkit.core import BuildContext
from fmmkit.core.validators import SpecValueError, non_negative, one_of, positive, unit_interval
from fmmkit.nets.attention import AttentionBackbone, resolve_backends
from fmmkit.nets.conditioning import ConditionEmbedding, image_shape
from fmmkit.nets.embeddings import TIME_EMBEDDINGS, TIME_PAIRS


@attrs.define(frozen=True)
class ImageBackboneConfig:
    """The keys unet and dit share: the time embedding (kind, pair, width per time, highest frequency), label
    dropout, and the attention backends of ordinary and derivative passes."""

    time_embedding: str = attrs.field(default="sinusoidal", validator=one_of(TIME_EMBEDDINGS))
    time_pair: str = attrs.field(default="s_t", validator=one_of(TIME_PAIRS))
    time_dim: int = attrs.field(default=128, validator=positive)
    #: highest sinusoid frequency of the time features; a derivative in s or t multiplies each feature by its
    #: frequency, so losses whose target holds a detached time derivative (iMF, MeanFlow, EMD-sg, AYF, sCM) want
    #: a low one (digits iMF: 10)
    max_frequency: float = attrs.field(default=1000.0, validator=positive)
    label_dropout: float = attrs.field(default=0.0, validator=[non_negative, unit_interval])
    attention: str = "sdpa"
    forward_ad_attention: str = "forward_ad"

    def __attrs_post_init__(self) -> None:
        if self.time_dim % 2:
            raise SpecValueError("time_dim", f"must be even, got {self.time_dim}")



class ImageBackbone(AttentionBackbone):
    """What the image backbones (unet, dit) share: images (C, H, W), their attention backends, and the
    conditioning c(s, t, y) built from the config's time-embedding keys; a subclass builds its layers
    in :meth:`make_layers`."""

    kind = "image backbone"

    def __init__(self, config: Any, shape: tuple[int, ...], num_classes: int | None = None,
                 ctx: BuildContext | None = None) -> None:
        super().__init__()
        self.config = config
        self.shape = image_shape(shape, self.kind)
        self.num_classes = num_classes
        self.backends = resolve_backends(config, ctx)
        self.guidance_input = bool(ctx is not None and ctx.guidance_input)  # variable guidance: w is an input
        self.make_layers(config, *self.shape)

    @abstractmethod
    def make_layers(self, config: Any, channels: int, height: int, width: int) -> None:
        """Create the network's layers for images (channels, height, width)."""

    def condition(self, dim: int) -> ConditionEmbedding:
        """c(s, t, y) of width ``dim`` from the config's time_dim, time_embedding, time_pair, max_frequency and
        label_dropout (and the guidance scale and interval when the model takes them as inputs)."""
        cfg = self.config
        return ConditionEmbedding(dim, cfg.time_dim, cfg.time_embedding, cfg.time_pair, self.num_classes,
                                  cfg.label_dropout, guidance=self.guidance_input, max_frequency=cfg.max_frequency)

    def enable_second_time(self) -> None:
        """Start-from-teacher opt-in (:meth:`fmmkit.core.Backbone.enable_second_time`): the condition
        c(s, t, y) (``self.cond``, made by :meth:`condition`) becomes the diagonal conditioning at t plus a
        zero-initialised embedding of the second time."""
        self.cond.enable_second_time()
        self.second_time_enabled = True

    def check_input(self, x: Tensor) -> None:
        """Images of the shape the backbone was built for."""
        assert x.shape[1:] == self.shape, f"{self.kind} expects images of shape {self.shape}, got {tuple(x.shape[1:])}"
