"""``dit``: a Diffusion Transformer v(x, s, t, y) (Peebles & Xie 2023) conditioned on both times.

Patchify (a p x p conv with stride p) plus fixed 2D sine-cosine position embeddings; ``depth``
adaLN-Zero blocks: with (shift, scale, gate) x 2 = Linear(SiLU(c)), zero-initialised,
  x <- x + gate_1 * Attn(LN(x) (1 + scale_1) + shift_1),   x <- x + gate_2 * MLP(LN(x) (1 + scale_2) + shift_2);
a final adaptive LayerNorm and a zero-initialised linear layer back to p x p x C per token, then
unpatchify. c = c(s, t, y) from :class:`fmmkit.nets.conditioning.ConditionEmbedding`; label
dropout (classifier-free guidance) uses the extra null class.

Presets ``preset = "S/2"`` ... ``"XL/8"``: S (depth 12, width 384, 6 heads), B (12, 768, 12),
L (24, 1024, 16), XL (28, 1152, 16), with patch 2, 4 or 8; ``depth``, ``hidden_size``,
``num_heads`` and ``patch_size`` override the preset when set.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fmmkit.core.validators import SpecValueError, one_of, positive
from fmmkit.hookspecs import hookimpl
from fmmkit.nets.conditioning import BackboneConfigError, zero_
from fmmkit.nets.image_backbone import ImageBackbone, ImageBackboneConfig
from fmmkit.nets.attention import SelfAttention

#: size -> (depth, hidden size, heads)
DIT_SIZES: dict[str, tuple[int, int, int]] = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
                                              "XL": (28, 1152, 16)}
DIT_PRESETS: tuple[str, ...] = tuple(f"{size}/{patch}" for size in DIT_SIZES for patch in (2, 4, 8))


@attrs.define(frozen=True)
class DiTConfig(ImageBackboneConfig):
    """preset (S/B/L/XL with patch 2/4/8) and optional overrides; MLP ratio; time embedding; label
    dropout; attention backends of ordinary and derivative passes."""

    preset: str = attrs.field(default="S/2", validator=one_of(DIT_PRESETS))
    depth: int | None = attrs.field(default=None, validator=positive)
    hidden_size: int | None = attrs.field(default=None, validator=positive)
    num_heads: int | None = attrs.field(default=None, validator=positive)
    patch_size: int | None = attrs.field(default=None, validator=positive)
    mlp_ratio: float = attrs.field(default=4.0, validator=positive)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.resolved_hidden % self.resolved_heads:
            raise SpecValueError("num_heads", f"must divide hidden_size = {self.resolved_hidden}, got {self.resolved_heads}")
        if self.resolved_hidden % 4:
            raise SpecValueError("hidden_size", f"must be a multiple of 4 (2D sine-cosine positions), got {self.resolved_hidden}")

    @property
    def resolved_depth(self) -> int:
        return self.depth or DIT_SIZES[self.preset.split("/")[0]][0]

    @property
    def resolved_hidden(self) -> int:
        return self.hidden_size or DIT_SIZES[self.preset.split("/")[0]][1]

    @property
    def resolved_heads(self) -> int:
        return self.num_heads or DIT_SIZES[self.preset.split("/")[0]][2]

    @property
    def resolved_patch(self) -> int:
        return self.patch_size or int(self.preset.split("/")[1])


def sincos_positions(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2D sine-cosine position embeddings (grid_h * grid_w, dim): half the width per axis."""
    def axis(n: int, width: int) -> Tensor:
        omega = 1.0 / 10000 ** (torch.arange(width // 2, dtype=torch.float64) / (width // 2))
        angles = torch.arange(n, dtype=torch.float64)[:, None] * omega[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (n, width)

    rows = axis(grid_h, dim // 2)[:, None, :].expand(grid_h, grid_w, dim // 2)
    cols = axis(grid_w, dim // 2)[None, :, :].expand(grid_h, grid_w, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(grid_h * grid_w, dim).float()


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block on tokens (B, N, hidden)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, backends: tuple[Any, Any]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attention = SelfAttention(hidden, heads, *backends)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        width = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, width), nn.GELU(approximate="tanh"), nn.Linear(width, hidden))
        self.modulation = zero_(nn.Linear(hidden, 6 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(c)).to(x.dtype).chunk(6, dim=1)
        x = x + gate1[:, None, :] * self.attention(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None, :] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class DiT(ImageBackbone):
    """v(x, s, t, y) for images x (B, C, H, W) by a transformer over p x p patches."""

    Config = DiTConfig
    kind = "dit"

    def make_layers(self, config: DiTConfig, cin: int, height: int, width: int) -> None:  # type: ignore[override]
        p, hidden = config.resolved_patch, config.resolved_hidden
        if height % p or width % p:
            raise BackboneConfigError(
                f"model.patch_size: patch {p} does not divide the {height}x{width} images; choose a patch size "
                "that divides H and W (or a preset with one)"
            )
        self.patch = p
        self.grid = (height // p, width // p)
        self.embed = nn.Conv2d(cin, hidden, p, stride=p)
        self.register_buffer("positions", sincos_positions(hidden, *self.grid)[None], persistent=False)
        self.cond = self.condition(hidden)
        self.blocks = nn.ModuleList(DiTBlock(hidden, config.resolved_heads, config.mlp_ratio, self.backends)
                                    for _ in range(config.resolved_depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_modulation = zero_(nn.Linear(hidden, 2 * hidden))
        self.final = zero_(nn.Linear(hidden, p * p * cin))
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform linear layers (DiT's init), except the zero-initialised ones."""
        zeroed = {id(m) for m in (self.final, self.final_modulation, *(b.modulation for b in self.blocks))}
        for module in self.modules():
            if isinstance(module, nn.Linear) and id(module) not in zeroed:
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.embed.weight.view(self.embed.weight.shape[0], -1))
        nn.init.zeros_(self.embed.bias)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """(B, N, p p C) -> (B, C, H, W)."""
        b = tokens.shape[0]
        gh, gw = self.grid
        c, p = self.shape[0], self.patch
        x = tokens.reshape(b, gh, gw, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, gh * p, gw * p)

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        self.check_input(x)
        c = self.cond(s, t, y)  # (B, hidden), float32 (float64 for float64 times)
        h = self.embed(x).flatten(2).transpose(1, 2) + self.positions.to(x.dtype)  # (B, N, hidden)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(F.silu(c)).to(h.dtype).chunk(2, dim=1)
        return self.unpatchify(self.final(_modulate(self.final_norm(h), shift, scale)))  # (B, C, H, W)


@hookimpl
def register_backbones(register) -> None:  # type: ignore[no-untyped-def]
    register("dit", DiT)
