"""Other models' noising processes, each matched to an fmmkit interpolant by a change of time.

A pretrained model was trained on states z = a x_data + s eps of *its* process, at noise levels
indexed by *its* time (the natural time tau below) and given to the network as a model time m
(a timestep index, tau * 1000, sigma, ...). fmmkit's interpolant is I_t = alpha_t x0 + beta_t x1
with noise x0 at t = 0 and data x1 at t = 1. Two Gaussian paths with gamma = 0 have the same
marginals at the times where their signal-to-noise ratios agree,

    a / s = beta_t / alpha_t,       and then   z = c_t I_t,   c_t = sqrt(a^2 + s^2) / sqrt(alpha_t^2 + beta_t^2),

since a x1 + s x0 = c (beta_t x1 + alpha_t x0). So each process below fixes (i) the fmmkit
interpolant its states are a rescaling of, (ii) the time change t <-> tau, (iii) the state scale
c_t, (iv) the model time m(tau) and (v) da/dtau, ds/dtau (for models that predict dz/dtau).

- ``linear`` (rectified flow, flow matching, SD3 / diffusers FlowMatchEuler): z = (1 - tau) x_data + tau eps
  with noise at tau = 1 (``time_direction = "noise_at_1"``: tau = 1 - t) or z = tau x_data + (1 - tau) eps
  (``"noise_at_0"``, fmmkit's and Lipman et al.'s: tau = t). fmmkit interpolant ``linear``, c_t = 1,
  m = time_scale * tau (diffusers: time_scale = num_train_timesteps = 1000).
- ``vp`` (DDPM/DDIM, improved DDPM, score-SDE VP): z = sqrt(abar) x_data + sqrt(1 - abar) eps with noise at
  the end of its time. fmmkit interpolant ``trig`` (alpha = cos(pi t / 2), beta = sin(pi t / 2)), c_t = 1,
  and the time change is  t = (2 / pi) arcsin(sqrt(abar(tau))).
  Continuous tau in [0, 1] (Song et al. 2021): linear beta, abar(tau) = exp(-N (b0 tau + (b1 - b0) tau^2 / 2))
  (b0, b1 = beta_start, beta_end per step of an N-step schedule: N b0 = 0.1, N b1 = 20 for DDPM's), or
  cosine, abar(tau) = cos^2((tau + o) / (1 + o) pi / 2) / cos^2(o / (1 + o) pi / 2) with o = 0.008
  (Nichol & Dhariwal 2021, eq. 17); m = time_scale * tau.
  Discrete (an N-step table abar_k, k = 0 .. N-1, as DDPM and diffusers train): the network takes the
  timestep index m = k. Between integer timesteps the noise level is log-linear in k (the convention
  of diffusers' EulerDiscreteScheduler._sigma_to_t, sigma_k = sqrt((1 - abar_k) / abar_k)), so an
  fmmkit time t maps to the fractional index k(t) with log sigma(k) = log(alpha_t / beta_t); "velocity"
  is then dz/dk. A zero terminal SNR (abar_{N-1} = 0) is replaced by 2^-24, as diffusers does.
- ``ve`` / ``edm`` (NCSN++, EDM): x = x_data + sigma eps, sigma in [sigma_min, sigma_max]. Not of fmmkit's
  form (its variance grows without bound), so it enters through its scaled form
  x / sqrt(1 + sigma^2) = a x_data + s eps with a = 1 / sqrt(1 + sigma^2), s = sigma a, a VP state:
  fmmkit interpolant ``trig`` with sigma = cot(pi t / 2) (t = (2 / pi) arctan(1 / sigma)), and the
  network sees x = c_t I_t with c_t = sqrt(1 + sigma^2) = 1 / sin(pi t / 2). The natural time is sigma
  (dx/dsigma = eps is the probability-flow velocity in sigma, EDM eq. 4 with s = 1); m = time_scale * sigma.
  ``ve`` defaults to Song et al.'s sigma in [0.01, 50], ``edm`` to Karras et al.'s [0.002, 80].

Outside the times a process covers (sigma beyond its range, tau beyond [0, 1]) the model is
queried at the nearest covered time: see :class:`fmmkit.conversion.predictions.Conversion`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from fmmkit.core import Interpolant

ProcessKind = Literal["linear", "vp", "ve", "edm"]
PROCESSES: tuple[str, ...] = ("linear", "vp", "ve", "edm")
TimeDirection = Literal["noise_at_1", "noise_at_0"]
TIME_DIRECTIONS: tuple[str, ...] = ("noise_at_1", "noise_at_0")
VPSchedule = Literal["linear", "scaled_linear", "cosine"]
VP_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "cosine")
#: diffusers' stand-in for a zero terminal alphas_cumprod (EulerDiscreteScheduler with rescale_betas_zero_snr)
ZERO_SNR_ALPHA_BAR = 2.0**-24
#: the sigma ranges ``ve`` and ``edm`` default to (Song et al. 2021; Karras et al. 2022)
DEFAULT_SIGMAS: dict[str, tuple[float, float]] = {"ve": (0.01, 50.0), "edm": (0.002, 80.0)}


@dataclass(frozen=True)
class ProcessPoint:
    """A process at the noise level of fmmkit times t (each a (B,) float64 tensor).

    scale: c_t with z = c_t I_t; a, s: z = a x_data + s eps; da, ds: their derivatives in the natural
    time tau; model_time: the network's time input m(tau).
    """

    scale: Tensor
    a: Tensor
    s: Tensor
    da: Tensor
    ds: Tensor
    model_time: Tensor


def _interpolant(kind: str) -> Interpolant:
    if kind == "linear":
        from fmmkit.interpolants.linear import LinearInterpolant

        return LinearInterpolant()
    from fmmkit.interpolants.trig import TrigInterpolant

    return TrigInterpolant()


class Process(ABC):
    """A model's noising process and its time change to an fmmkit interpolant (module docstring)."""

    #: the registered fmmkit interpolant whose states the process's states rescale
    interpolant_kind: ClassVar[str]

    def interpolant(self) -> Interpolant:
        """The fmmkit interpolant of this process (gamma = 0)."""
        return _interpolant(self.interpolant_kind)

    @abstractmethod
    def time_range(self) -> tuple[float, float]:
        """[t_lo, t_hi]: the fmmkit times whose noise levels the process covers."""

    @abstractmethod
    def at(self, t: Tensor) -> ProcessPoint:
        """The process at fmmkit times t (B,) float64 inside :meth:`time_range`."""

    def describe(self) -> dict[str, object]:
        """A JSON-able description (for exported configs and messages)."""
        return {"process": type(self).__name__}


def _signal_noise(interpolant: Interpolant, t: Tensor) -> tuple[Tensor, Tensor]:
    return interpolant.beta(t), interpolant.alpha(t)


@dataclass(frozen=True)
class LinearProcess(Process):
    """z = (1 - tau) x_data + tau eps (noise_at_1, tau = 1 - t) or tau x_data + (1 - tau) eps (noise_at_0, tau = t)."""

    time_direction: TimeDirection = "noise_at_1"
    time_scale: float = 1.0
    interpolant_kind: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        if self.time_direction not in TIME_DIRECTIONS:
            raise ValueError(f"time_direction must be one of {TIME_DIRECTIONS}, got {self.time_direction!r}")

    def time_range(self) -> tuple[float, float]:
        return 0.0, 1.0

    @property
    def sign(self) -> float:
        """d tau / d t: -1 when noise is at tau = 1, +1 when it is at tau = 0."""
        return -1.0 if self.time_direction == "noise_at_1" else 1.0

    def at(self, t: Tensor) -> ProcessPoint:
        tau = 1 - t if self.time_direction == "noise_at_1" else t
        one = torch.ones_like(t)
        # a = t, s = 1 - t in either direction; d/dtau = sign * d/dt
        return ProcessPoint(one, t, 1 - t, self.sign * one, -self.sign * one, self.time_scale * tau)

    def describe(self) -> dict[str, object]:
        return {"process": "linear", "time_direction": self.time_direction, "time_scale": self.time_scale}


@dataclass(frozen=True)
class VPContinuous(Process):
    """Continuous-time VP: abar(tau) linear-beta or cosine, tau in [0, 1], noise at tau = 1; m = time_scale tau."""

    schedule: VPSchedule = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_timesteps: int = 1000
    cosine_offset: float = 0.008
    time_scale: float = 1.0
    interpolant_kind: ClassVar[str] = "trig"

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"a continuous-time VP schedule is 'linear' or 'cosine', got {self.schedule!r} "
                             "(scaled_linear exists only as a discrete table)")

    def alpha_bar(self, tau: Tensor) -> Tensor:
        """abar(tau) of the schedule (module docstring)."""
        if self.schedule == "linear":
            n, b0, b1 = self.num_timesteps, self.beta_start, self.beta_end
            return torch.exp(-n * (b0 * tau + (b1 - b0) * tau**2 / 2))
        o = self.cosine_offset
        return (torch.cos((tau + o) / (1 + o) * math.pi / 2) / math.cos(o / (1 + o) * math.pi / 2)) ** 2

    def time_range(self) -> tuple[float, float]:
        end = float(self.alpha_bar(torch.tensor(1.0, dtype=torch.float64)).clamp(0, 1))
        return 2 / math.pi * math.asin(math.sqrt(end)), 1.0

    def at(self, t: Tensor) -> ProcessPoint:
        a, s = _signal_noise(self.interpolant(), t)  # sqrt(abar) = sin(pi t / 2), sqrt(1 - abar) = cos(pi t / 2)
        if self.schedule == "linear":
            n, b0, b1 = self.num_timesteps, self.beta_start, self.beta_end
            big_l = -2 * torch.log(a)  # -log abar = n (b0 tau + (b1 - b0) tau^2 / 2)
            if b1 == b0:
                tau = big_l / (n * b0)
            else:
                tau = (-b0 + torch.sqrt(b0**2 + 2 * (b1 - b0) * big_l / n)) / (b1 - b0)
            rate = n * (b0 + (b1 - b0) * tau)  # -d log abar / d tau
            da = -rate * a / 2
        else:
            o = self.cosine_offset
            c0 = math.cos(o / (1 + o) * math.pi / 2)
            u = torch.arccos((a * c0).clamp(-1, 1))  # sqrt(abar) = cos(u) / c0
            tau = u * (1 + o) * 2 / math.pi - o
            da = -torch.sin(u) / c0 * (math.pi / 2) / (1 + o)
        ds = -a * da / s  # s = sqrt(1 - a^2)
        return ProcessPoint(torch.ones_like(t), a, s, da, ds, self.time_scale * tau)

    def describe(self) -> dict[str, object]:
        return {"process": "vp", "time": "continuous", "schedule": self.schedule, "beta_start": self.beta_start,
                "beta_end": self.beta_end, "num_timesteps": self.num_timesteps, "time_scale": self.time_scale}


def discrete_alpha_bars(schedule: VPSchedule, num_timesteps: int = 1000, beta_start: float = 1e-4,
                        beta_end: float = 0.02) -> Tensor:
    """abar_k = prod_{j <= k} (1 - beta_j), k = 0 .. N-1, computed in float32 as diffusers does.

    linear: beta_k = linspace(beta_start, beta_end, N) (DDPM, Ho et al. 2020); scaled_linear:
    linspace(sqrt(beta_start), sqrt(beta_end), N)^2 (latent diffusion); cosine: Nichol & Dhariwal's
    beta_k = min(1 - f((k + 1) / N) / f(k / N), 0.999), f(u) = cos^2((u + 0.008) / 1.008 pi / 2)
    (diffusers' ``squaredcos_cap_v2``).
    """
    n = num_timesteps
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    elif schedule == "cosine":
        def f(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - f((k + 1) / n) / f(k / n), 0.999) for k in range(n)], dtype=torch.float32)
    else:
        raise ValueError(f"schedule must be one of {VP_SCHEDULES}, got {schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0)


class VPDiscrete(Process):
    """N-step VP: a table abar_k; the network takes the (fractional) timestep index k (module docstring).

    ``model_time = "index"`` gives the network k; ``"log_sigma"`` gives it 0.25 log sigma (diffusers'
    EulerDiscreteScheduler with timestep_type = "continuous" and v-prediction).
    """

    interpolant_kind: ClassVar[str] = "trig"

    def __init__(self, alpha_bars: Tensor, model_time: Literal["index", "log_sigma"] = "index") -> None:
        acp = torch.as_tensor(alpha_bars, dtype=torch.float64).clamp_min(ZERO_SNR_ALPHA_BAR)
        if acp.ndim != 1 or acp.numel() < 2:
            raise ValueError(f"a discrete VP schedule needs a 1-D table of at least 2 alpha_bars, got shape {tuple(acp.shape)}")
        log_sigmas = 0.5 * (torch.log1p(-acp.clamp_max(1 - 1e-12)) - torch.log(acp))
        if not bool((log_sigmas[1:] > log_sigmas[:-1]).all()):
            raise ValueError("alphas_cumprod must decrease strictly with the timestep (every beta > 0)")
        self.alpha_bars = acp
        self.log_sigmas = log_sigmas
        self.model_time = model_time

    def time_range(self) -> tuple[float, float]:
        lo, hi = float(self.log_sigmas[-1]), float(self.log_sigmas[0])
        return 2 / math.pi * math.atan(math.exp(-lo)), 2 / math.pi * math.atan(math.exp(-hi))

    def at(self, t: Tensor) -> ProcessPoint:
        a, s = _signal_noise(self.interpolant(), t)
        log_sigma = torch.log(s) - torch.log(a)
        table = self.log_sigmas.to(t.device)
        hi = torch.searchsorted(table, log_sigma.detach().contiguous()).clamp(1, table.numel() - 1)
        lo = hi - 1
        slope = table[hi] - table[lo]  # d log sigma / dk on this interval
        k = lo.to(t.dtype) + (log_sigma - table[lo]) / slope
        # a = 1 / sqrt(1 + sigma^2), s = sigma a:  da / dlog sigma = -a s^2,  ds / dlog sigma = s a^2
        da, ds = -a * s**2 * slope, s * a**2 * slope
        m = k if self.model_time == "index" else 0.25 * log_sigma
        return ProcessPoint(torch.ones_like(t), a, s, da, ds, m)

    def describe(self) -> dict[str, object]:
        return {"process": "vp", "time": "discrete", "num_timesteps": int(self.alpha_bars.numel()),
                "model_time": self.model_time}


@dataclass(frozen=True)
class VEProcess(Process):
    """x = x_data + sigma eps, sigma in [sigma_min, sigma_max], through its VP-scaled form (module docstring)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    time_scale: float = 1.0
    name: str = "edm"
    interpolant_kind: ClassVar[str] = "trig"

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")

    def time_range(self) -> tuple[float, float]:
        return 2 / math.pi * math.atan(1 / self.sigma_max), 2 / math.pi * math.atan(1 / self.sigma_min)

    def sigma(self, t: Tensor) -> Tensor:
        """sigma = alpha_t / beta_t (= cot(pi t / 2) for the trig interpolant)."""
        a, s = _signal_noise(self.interpolant(), t)
        return s / a

    def at(self, t: Tensor) -> ProcessPoint:
        beta, alpha = _signal_noise(self.interpolant(), t)
        sigma = alpha / beta
        one = torch.ones_like(t)
        scale = torch.sqrt(1 + sigma**2) / torch.sqrt(alpha**2 + beta**2)
        return ProcessPoint(scale, one, sigma, torch.zeros_like(t), one, self.time_scale * sigma)

    def describe(self) -> dict[str, object]:
        return {"process": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "time_scale": self.time_scale}
