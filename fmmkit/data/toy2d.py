"""2D toy distributions: ``checkerboard``, ``eight_gaussians``, ``two_moons``, ``pinwheel``, ``spirals``.

Every source draws float32 points of shape (2,) using only the generator it is given. With
``labels = true`` a source also returns the index of the mode (square, Gaussian, moon, blade, arm)
each point came from, for class-conditional runs.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, ClassVar

import attrs
import torch
from torch import Tensor

from fmmkit.core import Batch, DataSource, SupportRegion
from fmmkit.core.validators import at_least, non_negative, positive
from fmmkit.data.balls import rice_cdf
from fmmkit.hookspecs import hookimpl


class Toy2D(DataSource):
    """A 2D toy source: subclasses draw (points, mode index) and say how many modes there are in
    ``modes``: a number, or the name of the config key that holds it."""

    shape = (2,)
    modes: ClassVar[int | str]

    def __init__(self, config: Any) -> None:
        self.config = config
        self.num_classes = self.num_modes if config.labels else None

    @property
    def num_modes(self) -> int:
        """Number of modes (the label count when ``labels`` is on)."""
        return self.modes if isinstance(self.modes, int) else int(getattr(self.config, self.modes))

    @abstractmethod
    def _draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n points (n, 2) float32 and their mode indices (n,) int64."""

    def _extent(self) -> float:
        return 4.0

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        x, mode = self._draw(n, generator)
        return Batch(x.to(torch.float32), mode if self.config.labels else None)

    def bounds(self) -> tuple[float, float]:
        lim = self._extent()
        return (-lim, lim)


def _randn(n: int, generator: torch.Generator, *shape: int) -> Tensor:
    return torch.randn((n, *shape), generator=generator)


def _rand(n: int, generator: torch.Generator, *shape: int) -> Tensor:
    return torch.rand((n, *shape), generator=generator)


def _rotate(r: Tensor, angle: Tensor) -> Tensor:
    """Points at polar (r, angle) as (n, 2)."""
    return torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)


@attrs.define(frozen=True)
class CheckerboardConfig:
    """scale: side of one square (the board covers [-2 scale, 2 scale]^2); labels: return the square index."""

    scale: float = attrs.field(default=1.0, validator=positive)
    labels: bool = False


class Checkerboard(Toy2D):
    """Uniform on the 8 black squares of a 4x4 board on [-2, 2]^2: those with floor(x) + floor(y) even.

    Density 1 / (8 scale^2) on the black squares and 0 elsewhere.
    """

    Config = CheckerboardConfig
    #: lower-left corners (in units of scale) of the black squares
    CORNERS = torch.tensor([(i - 2, j - 2) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.float32)
    modes = 8

    def _draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        square = torch.randint(8, (n,), generator=generator)
        return (self.CORNERS[square] + _rand(n, generator, 2)) * self.config.scale, square

    def density(self, x: Tensor) -> Tensor:
        u = x / self.config.scale
        inside = ((u >= -2) & (u < 2)).all(dim=1)
        black = torch.floor(u).sum(dim=1).remainder(2) == 0
        return (inside & black).to(x.dtype) / (8 * self.config.scale**2)

    def support_region(self, level: float) -> SupportRegion:
        """The 8 black squares (where the density is positive); mass 1 whatever ``level``."""
        return SupportRegion(lambda x: self.density(x) > 0, 1.0, "inside the occupied squares")

    def _extent(self) -> float:
        return 2.0 * self.config.scale


@attrs.define(frozen=True)
class EightGaussiansConfig:
    """radius: distance of the 8 centres from the origin; std: isotropic std of each Gaussian."""

    radius: float = attrs.field(default=2.0, validator=positive)
    std: float = attrs.field(default=0.2, validator=positive)
    labels: bool = False


class EightGaussians(Toy2D):
    """Equal mixture of N(c_k, std^2 I), c_k = radius (cos 2 pi k / 8, sin 2 pi k / 8); density known."""

    Config = EightGaussiansConfig
    modes = 8

    def centres(self) -> Tensor:
        angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return _rotate(torch.full((8,), self.config.radius, dtype=torch.float64), angle)

    def _draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        k = torch.randint(8, (n,), generator=generator)
        return self.centres().float()[k] + self.config.std * _randn(n, generator, 2), k

    def density(self, x: Tensor) -> Tensor:
        var = self.config.std**2
        d2 = (x[:, None, :] - self.centres().to(x)[None]).pow(2).sum(-1)  # (B, 8)
        return torch.exp(-d2 / (2 * var)).mean(dim=1) / (2 * math.pi * var)

    def support_region(self, level: float) -> SupportRegion:
        """The union of the discs |x - c_k| <= r, r = std sqrt(-2 log(1 - level)), each holding ``level``
        of its own Gaussian (|x - c_k| / std is Rayleigh). Its mass under the mixture adds the other
        Gaussians' share of each disc, P(|c_j - c_k + std z| <= r) (a Rice CDF), so it is >= level.
        ValueError when the discs overlap (lower ``level``)."""
        std = self.config.std
        r = std * math.sqrt(-2 * math.log1p(-level))
        centres = self.centres()
        gaps = torch.cdist(centres, centres)
        nearest = float(gaps[~torch.eye(8, dtype=torch.bool)].min())
        if 2 * r >= nearest:
            raise ValueError(f"eight_gaussians: discs of mass {level} (radius {r:.3g}) overlap (centres {nearest:.3g} "
                             "apart); lower the in-support level")
        mass = float(rice_cdf(gaps / std, r / std).mean(dim=0).sum())  # (1/8) sum_j sum_k P_j(disc_k)

        def contains(x: Tensor) -> Tensor:
            return (torch.cdist(x.double(), centres) <= r).any(dim=1)

        return SupportRegion(contains, mass, f"within {r:.3g} of a centre")

    def _extent(self) -> float:
        return max(4.0, self.config.radius + 6 * self.config.std)


@attrs.define(frozen=True)
class TwoMoonsConfig:
    """noise: std of the Gaussian noise added to the two half circles (in output units)."""

    noise: float = attrs.field(default=0.1, validator=non_negative)
    labels: bool = False


class TwoMoons(Toy2D):
    """Two interleaved half circles of radius 2, centred at the origin (scikit-learn's moons x 2)."""

    Config = TwoMoonsConfig
    modes = 2

    def _draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        moon = torch.randint(2, (n,), generator=generator)
        angle = math.pi * _rand(n, generator)
        upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
        x = torch.where(moon[:, None] == 0, upper, lower)
        x = 2 * (x - torch.tensor([0.5, 0.25]))
        return x + self.config.noise * _randn(n, generator, 2), moon


@attrs.define(frozen=True)
class PinwheelConfig:
    """arms: number of blades; radial_std, tangential_std: blade widths; rate: how fast blades curl."""

    arms: int = attrs.field(default=5, validator=at_least(1))
    radial_std: float = attrs.field(default=0.3, validator=non_negative)
    tangential_std: float = attrs.field(default=0.1, validator=non_negative)
    rate: float = attrs.field(default=0.25, validator=non_negative)
    labels: bool = False


class Arms(Toy2D):
    """``arms`` copies of one shape turned by 2 pi k / arms (pinwheel blades, spiral arms); the arm k of a
    point is its mode."""

    modes = "arms"

    def _draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        arm = torch.randint(self.config.arms, (n,), generator=generator)
        return self._arm(n, generator, arm * (2 * math.pi / self.config.arms)), arm

    @abstractmethod
    def _arm(self, n: int, generator: torch.Generator, turn: Tensor) -> Tensor:
        """n points (n, 2) of the shape, each turned by its arm's angle ``turn`` (n,)."""


class Pinwheel(Arms):
    """Blade k: the point 2 (r, u), r = 1 + radial_std e1, u = tangential_std e2, rotated by
    2 pi k / arms + rate exp(r) (the FFJORD pinwheel)."""

    Config = PinwheelConfig

    def _arm(self, n: int, generator: torch.Generator, turn: Tensor) -> Tensor:
        e = _randn(n, generator, 2)
        r = 1 + self.config.radial_std * e[:, 0]
        u = self.config.tangential_std * e[:, 1]
        angle = turn + self.config.rate * torch.exp(r)
        c, s = torch.cos(angle), torch.sin(angle)
        return 2 * torch.stack([c * r - s * u, s * r + c * u], dim=1)

    def _extent(self) -> float:
        return max(4.0, 2 * (1 + 4 * self.config.radial_std))


@attrs.define(frozen=True)
class SpiralsConfig:
    """labels: the arm as class label; arms: number of spiral arms; turns: revolutions per arm; radius:
    outer radius; noise: Gaussian std."""

    labels: bool = False
    arms: int = attrs.field(default=2, validator=at_least(1))
    turns: float = attrs.field(default=1.5, validator=positive)
    radius: float = attrs.field(default=3.0, validator=positive)
    noise: float = attrs.field(default=0.1, validator=non_negative)


class Spirals(Arms):
    """Archimedean arms r = radius theta / (2 pi turns), theta = 2 pi turns sqrt(u) (about uniform in arc length)."""

    Config = SpiralsConfig

    def _arm(self, n: int, generator: torch.Generator, turn: Tensor) -> Tensor:
        cfg = self.config
        frac = torch.sqrt(_rand(n, generator))
        x = _rotate(cfg.radius * frac, 2 * math.pi * cfg.turns * frac + turn)
        return x + cfg.noise * _randn(n, generator, 2)

    def _extent(self) -> float:
        return max(4.0, self.config.radius + 5 * self.config.noise)


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register("checkerboard", Checkerboard)
    register("eight_gaussians", EightGaussians)
    register("two_moons", TwoMoons)
    register("pinwheel", Pinwheel)
    register("spirals", Spirals)
