"""``unet``: an ADM/EDM-style UNet v(x, s, t, y) for images, conditioned on both times.

Layout (Dhariwal & Nichol 2021; Karras et al. 2022): a 3x3 input conv; per resolution level i,
``num_res_blocks`` residual blocks of width channels * channel_mult[i] (self-attention after each
block at resolutions listed in ``attention_resolutions``), then a strided-conv downsample; a
middle block (res, attention, res); the mirrored up path with skip concatenations and
nearest-neighbour upsampling; GroupNorm, SiLU and a zero-initialised 3x3 output conv (so the
initial flow map is X_{s,t} = x). Each residual block is modulated by the conditioning vector
c(s, t, y) through adaptive GroupNorm: h <- GN(h) (1 + scale(c)) + shift(c).

Attention uses the backend named by ``attention`` and, inside ``forward_ad_mode()`` (every
derivative pass of fmmkit.core.derivatives), the one named by ``forward_ad_attention``.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fmmkit.core.validators import SpecValueError, each, positive, unit_interval
from fmmkit.hookspecs import hookimpl
from fmmkit.nets.conditioning import BackboneConfigError, zero_
from fmmkit.nets.image_backbone import ImageBackbone, ImageBackboneConfig
from fmmkit.nets.attention import SelfAttention


@attrs.define(frozen=True)
class UNetConfig(ImageBackboneConfig):
    """Widths (channels x channel_mult per level), blocks per level, attention resolutions and heads,
    dropout, GroupNorm groups, time embedding (kind, pair, width per time), label dropout, and the
    attention backends of ordinary and derivative passes."""

    channels: int = attrs.field(default=128, validator=positive)
    channel_mult: list[int] = attrs.field(factory=lambda: [1, 2, 2, 2], validator=each(positive))
    num_res_blocks: int = attrs.field(default=2, validator=positive)
    attention_resolutions: list[int] = attrs.field(factory=lambda: [16], validator=each(positive))
    mid_attention: bool = True
    num_heads: int = attrs.field(default=4, validator=positive)
    dropout: float = attrs.field(default=0.1, validator=unit_interval)
    groups: int = attrs.field(default=32, validator=positive)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not self.channel_mult:
            raise SpecValueError("channel_mult", "needs at least one level, e.g. [1, 2, 2, 2]")
        if self.channels % self.groups:
            raise SpecValueError("groups", f"must divide channels = {self.channels}, got {self.groups}")
        for m in self.channel_mult:
            if (self.channels * m) % self.num_heads:
                raise SpecValueError("num_heads", f"must divide every level width channels * mult, got {self.num_heads}")


class ResBlock(nn.Module):
    """x + F(x, c): GN-SiLU-conv, adaptive GN by c, SiLU-dropout-conv (zero-init); 1x1 skip if widths differ."""

    def __init__(self, cin: int, cout: int, cond_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.modulation = nn.Linear(cond_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.modulation(F.silu(c)).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """x + attention(GN(x)) over the H W positions (output projection zero-initialised)."""

    def __init__(self, channels: int, groups: int, heads: int, backends: tuple[Any, Any]) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attention = SelfAttention(channels, heads, *backends, zero_init_out=True)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        b, ch, h, w = x.shape
        tokens = self.norm(x).reshape(b, ch, h * w).transpose(1, 2)  # (B, HW, C)
        out = self.attention(tokens).transpose(1, 2).reshape(b, ch, h, w)
        return x + out


class Downsample(nn.Module):
    """3x3 conv with stride 2: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.ModuleList):
    """Layers applied in order, each called as layer(h, c)."""

    def forward(self, h: Tensor, c: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            h = layer(h, c)
        return h


class UNet(ImageBackbone):
    """v(x, s, t, y) for images x (B, C, H, W); see the module docstring for the layout."""

    Config = UNetConfig
    kind = "unet"

    def make_layers(self, config: UNetConfig, cin: int, height: int, width: int) -> None:  # type: ignore[override]
        levels = len(config.channel_mult)
        if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
            raise BackboneConfigError(
                f"model.channel_mult: {levels} levels halve the image {levels - 1} times, which needs H and W "
                f"divisible by {2 ** (levels - 1)}; the data is {height}x{width}: use fewer levels or resize the data"
            )
        backends = self.backends
        ch, groups, heads = config.channels, config.groups, config.num_heads
        cond_dim = 4 * ch
        self.cond = self.condition(cond_dim)

        def res(a: int, b: int) -> ResBlock:
            return ResBlock(a, b, cond_dim, groups, config.dropout)

        self.conv_in = nn.Conv2d(cin, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        width_now, resolution = ch, height
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                stage = Stage([res(width_now, ch * mult)])
                width_now = ch * mult
                if resolution in config.attention_resolutions:
                    stage.append(AttentionBlock(width_now, groups, heads, backends))
                self.down.append(stage)
                skips.append(width_now)
            if level != levels - 1:
                self.down.append(Stage([Downsample(width_now)]))
                skips.append(width_now)
                resolution //= 2
        middle: list[nn.Module] = [res(width_now, width_now)]
        if config.mid_attention:
            middle.append(AttentionBlock(width_now, groups, heads, backends))
        middle.append(res(width_now, width_now))
        self.middle = Stage(middle)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                stage = Stage([res(width_now + skips.pop(), ch * mult)])
                width_now = ch * mult
                if resolution in config.attention_resolutions:
                    stage.append(AttentionBlock(width_now, groups, heads, backends))
                if level and i == config.num_res_blocks:
                    stage.append(Upsample(width_now))
                    resolution *= 2
                self.up.append(stage)
        assert not skips, f"unet skip bookkeeping left {skips}"
        self.out = nn.Sequential(nn.GroupNorm(groups, width_now), nn.SiLU(), zero_(nn.Conv2d(width_now, cin, 3, padding=1)))

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        self.check_input(x)
        c = self.cond(s, t, y)  # (B, 4 channels), float32 (float64 for float64 times)
        h = self.conv_in(x)
        hs = [h]
        for stage in self.down:
            h = stage(h, c)
            hs.append(h)
        h = self.middle(h, c)
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), c)
        return self.out(h)  # (B, C, H, W)


@hookimpl
def register_backbones(register) -> None:  # type: ignore[no-untyped-def]
    register("unet", UNet)
