"""Stochastic interpolants I_t = alpha(t) x0 + beta(t) x1 + gamma(t) z (Albergo & Vanden-Eijnden).

Convention: noise x0 ~ N(0, I) at t = 0, data x1 at t = 1, z ~ N(0, I) independent. The boundary
conditions alpha(0) = beta(1) = 1, alpha(1) = beta(0) = 0, gamma(0) = gamma(1) = 0 make I_0 = x0
and I_1 = x1, and they are checked when an interpolant is constructed.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fmmkit.core.component import Component
from fmmkit.core.shapes import as_batch_times, broadcast_time


class InterpolantError(ValueError):
    """An interpolant violates its boundary conditions."""


@dataclass
class InterpolantSample:
    """One draw of the interpolant: times t (B,), I_t and its time derivative dI_t/dt (B, ...)."""

    t: Tensor
    x_t: Tensor
    dx_t: Tensor
    x0: Tensor
    x1: Tensor
    z: Tensor | None


class _CheckedOnConstruction(ABCMeta):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__call__(*args, **kwargs)
        instance.check_boundary_conditions()
        return instance


class Interpolant(Component, metaclass=_CheckedOnConstruction):
    """I_t = alpha(t) x0 + beta(t) x1 + gamma(t) z, with gamma(t) = a sqrt(t (1 - t)) by default.

    Subclasses give alpha, beta and their derivatives; ``noise_scale`` is the a of gamma (0 gives a
    deterministic interpolant). Every coefficient takes a tensor of times and returns one like it.
    """

    noise_scale: float = 0.0

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Coefficient of the noise x0."""

    @abstractmethod
    def beta(self, t: Tensor) -> Tensor:
        """Coefficient of the data x1."""

    @abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor:
        """d alpha / dt."""

    @abstractmethod
    def d_beta(self, t: Tensor) -> Tensor:
        """d beta / dt."""

    def gamma(self, t: Tensor) -> Tensor:
        """gamma(t) = a sqrt(t (1 - t))."""
        return self.noise_scale * torch.sqrt((t * (1 - t)).clamp_min(0))

    def d_gamma(self, t: Tensor) -> Tensor:
        """d gamma / dt = a (1 - 2t) / (2 sqrt(t (1 - t))); infinite at t = 0, 1 when a > 0."""
        if self.noise_scale == 0:
            return torch.zeros_like(t)
        return self.noise_scale * (1 - 2 * t) / (2 * torch.sqrt(t * (1 - t)))

    def gamma_d_gamma(self, t: Tensor) -> Tensor:
        """gamma(t) gamma'(t) = a^2 (1 - 2t) / 2, finite everywhere (enters d/dt Var I_t)."""
        return self.noise_scale**2 * (1 - 2 * t) / 2

    @property
    def stochastic(self) -> bool:
        """Whether gamma is not identically zero."""
        return self.noise_scale != 0

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor, z: Tensor | None = None) -> InterpolantSample:
        """I_t and dI_t/dt = alpha' x0 + beta' x1 + gamma' z at per-sample times t of shape (B,).

        Times stay float32 (float64 for float64 data); the coefficients are cast to the data's dtype.
        """
        assert x0.shape == x1.shape, f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must match"
        t = as_batch_times(t, x1)
        tb = broadcast_time(t, x1)
        c = lambda f: f(tb).to(x1.dtype)  # noqa: E731
        x_t = c(self.alpha) * x0 + c(self.beta) * x1
        dx_t = c(self.d_alpha) * x0 + c(self.d_beta) * x1
        if self.stochastic:
            assert z is not None and z.shape == x1.shape, "a stochastic interpolant needs z shaped like x1"
            x_t = x_t + c(self.gamma) * z
            dx_t = dx_t + c(self.d_gamma) * z
        return InterpolantSample(t=t, x_t=x_t, dx_t=dx_t, x0=x0, x1=x1, z=z if self.stochastic else None)

    def draw(self, x1: Tensor, t: Tensor, generator: torch.Generator | None = None) -> InterpolantSample:
        """Draw x0 ~ N(0, I) (and z) and return the interpolant at times t for the data batch x1."""
        x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
        z = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device) if self.stochastic else None
        return self.interpolate(x0, x1, t, z)

    def check_boundary_conditions(self, atol: float = 1e-6) -> None:
        """Raise InterpolantError unless alpha(0)=beta(1)=1, alpha(1)=beta(0)=0, gamma(0)=gamma(1)=0."""
        ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
        values = {
            "alpha": (self.alpha(ends), (1.0, 0.0)),
            "beta": (self.beta(ends), (0.0, 1.0)),
            "gamma": (self.gamma(ends), (0.0, 0.0)),
        }
        for name, (got, want) in values.items():
            for end, g, w in zip((0, 1), got.tolist(), want):
                if not math.isclose(g, w, abs_tol=atol):
                    raise InterpolantError(
                        f"{type(self).__name__}: {name}({end}) = {g:.6g} but must be {w:g} "
                        "(noise x0 at t = 0, data x1 at t = 1)"
                    )
