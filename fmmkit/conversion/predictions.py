"""A model's prediction under its process -> fmmkit's velocity b_t(x) (noise at t = 0, data at t = 1).

With gamma = 0, I_t = alpha_t x0 + beta_t x1 gives b_t(x) = alpha'_t E[x0 | I_t = x] + beta'_t E[x1 | I_t = x],
and the conditional means are the same in the process's frame z = c_t x = a x_data + s eps
(:mod:`fmmkit.conversion.processes`): E[x1 | I_t = x] = E[x_data | z] =: d, E[x0 | I_t = x] = E[eps | z] =: e.
Each prediction p of the network at (z, m) gives (d, e) from the two linear equations z = a d + s e and
the definition of p:

- ``epsilon`` (Ho et al. 2020): p = e,                       d = (z - s e) / a
- ``x0`` (data, diffusers "sample"): p = d,                  e = (z - a d) / s
- ``v`` (Salimans & Ho 2022, diffusers "v_prediction"): p = a e - s d,
                                                             d = (a z - s p) / (a^2 + s^2), e = (s z + a p) / (a^2 + s^2)
- ``score`` (Song et al. 2021): p = grad_z log p(z) = -e / s (Tweedie),   e = -s p, d = (z - s e) / a
- ``velocity``: p = dz/dtau = a' d + s' e in the process's natural time tau,
                                                             d = (s' z - s p) / (a s' - s a'), e = (a p - a' z) / (a s' - s a');
  for ``linear`` processes this is b_t(x) = (d tau / d t) p(x, tau(t)), i.e. b_t(x) = -u(x, 1 - t) for a
  model with noise at tau = 1 (diffusers, SD3: u = eps - x_data) and b_t(x) = u(x, t) for one with noise at 0.
- ``edm_denoiser`` (Karras et al. 2022, Table 1): the raw network F of EDM's preconditioning,
  D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with c_skip = sd^2 / (sigma^2 + sd^2),
  c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4
  (sd = sigma_data); d = D, e = (x - D) / sigma, in the VE frame (process ``ve`` or ``edm``).
  A module that already returns D(x; sigma) (EDM's ``EDMPrecond``) is ``x0`` under ``edm``.

Then b_t(x) = alpha'_t e + beta'_t d. Epsilon and score divide by a (0 at pure noise, t = 0) and x0 and
EDM by s (0 at the data, t = 1), so :class:`Conversion` evaluates at t clamped to [t_lo, t_hi]: the
process's covered range, kept ``EDGE`` away from an end where the formula divides by zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fmmkit.conversion.processes import LinearProcess, Process, VEProcess
from fmmkit.core import Interpolant
from fmmkit.core.shapes import as_batch_times, broadcast_time

PredictionKind = Literal["velocity", "epsilon", "x0", "v", "score", "edm_denoiser"]
PREDICTIONS: tuple[str, ...] = ("velocity", "epsilon", "x0", "v", "score", "edm_denoiser")
#: how far from t = 0 or t = 1 a conversion that divides by a or s there is evaluated
EDGE = 1e-4

#: network(input, model_time) -> prediction, both shaped like x and (B,)
Network = Callable[[Tensor, Tensor], Tensor]


def _singular_ends(prediction: str, process: Process) -> tuple[bool, bool]:
    """(divides by a at t = 0, divides by s at t = 1) for this prediction under this process."""
    if prediction in ("epsilon", "score"):
        return True, False
    if prediction in ("x0", "edm_denoiser"):
        return False, True
    if prediction == "velocity":
        linear = isinstance(process, LinearProcess)
        return not linear, not linear
    return False, False  # v: a^2 + s^2 > 0 everywhere


@dataclass(frozen=True)
class Conversion:
    """A prediction type under a process, as fmmkit's velocity (module docstring).

    Args:
        process: the model's process (:mod:`fmmkit.conversion.processes`).
        prediction: what the network predicts (one of ``PREDICTIONS``).
        sigma_data: EDM's sigma_data (``edm_denoiser`` only).
        edm_output_sign: the sign of c_out; -1 for diffusers' EDM schedulers with v_prediction.

    Example:
        >>> import torch
        >>> from fmmkit.conversion import Conversion, LinearProcess
        >>> conv = Conversion(LinearProcess("noise_at_1", time_scale=1000.0), "velocity")
        >>> u = lambda z, m: torch.zeros_like(z) - 1.0   # a model whose u = eps - x_data is -1
        >>> conv.velocity(u, torch.zeros(2, 3), torch.full((2,), 0.25))[0, 0].item()
        1.0
    """

    process: Process
    prediction: PredictionKind
    sigma_data: float = 0.5
    edm_output_sign: float = 1.0

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.prediction == "edm_denoiser" and not isinstance(self.process, VEProcess):
            raise ValueError("edm_denoiser is EDM's preconditioning of a VE model: use process = \"edm\" (or \"ve\")")

    @property
    def interpolant(self) -> Interpolant:
        """The fmmkit interpolant the teacher's states are a rescaling of."""
        return self.process.interpolant()

    def time_range(self) -> tuple[float, float]:
        """[t_lo, t_hi]: times outside are evaluated at the nearest end (module docstring)."""
        lo, hi = self.process.time_range()
        low_singular, high_singular = _singular_ends(self.prediction, self.process)
        return (max(lo, EDGE) if low_singular else lo), (min(hi, 1 - EDGE) if high_singular else hi)

    def _clamp(self, t: Tensor) -> Tensor:
        lo, hi = self.time_range()
        return t.clamp(lo, hi)

    def velocity(self, network: Network, x: Tensor, t: Tensor | float) -> Tensor:
        """b_t(x) from ``network(input, model_time)``, computed in x's dtype with float64 coefficients."""
        t64 = self._clamp(as_batch_times(t, x).to(torch.float64))
        ip, pt = self.interpolant, self.process.at(t64)
        d_alpha, d_beta = ip.d_alpha(t64), ip.d_beta(t64)

        def col(v: Tensor) -> Tensor:  # (B,) float64 -> (B, 1, ..) in x's dtype
            return broadcast_time(v, x).to(x.dtype)

        if self.prediction == "velocity" and isinstance(self.process, LinearProcess):
            # exact in floating point: b_t(x) = (d tau / dt) u(x, tau(t)) (c_t = 1, the states agree)
            return self.process.sign * network(x, pt.model_time.to(x.dtype))
        a, s = col(pt.a), col(pt.s)
        z = col(pt.scale) * x
        if self.prediction == "edm_denoiser":
            sigma, sd = pt.s / pt.a, self.sigma_data
            c_in = 1 / torch.sqrt(sigma**2 + sd**2)
            c_skip = sd**2 / (sigma**2 + sd**2)
            c_out = self.edm_output_sign * sigma * sd / torch.sqrt(sigma**2 + sd**2)
            raw = network(col(c_in) * z, (torch.log(sigma) / 4).to(x.dtype))
            d = col(c_skip) * z + col(c_out) * raw
            e = (z - a * d) / s
        else:
            p = network(z, pt.model_time.to(x.dtype))
            d, e = self._means(p, z, a, s, col(pt.da), col(pt.ds))
        return col(d_alpha) * e + col(d_beta) * d

    def _means(self, p: Tensor, z: Tensor, a: Tensor, s: Tensor, da: Tensor, ds: Tensor) -> tuple[Tensor, Tensor]:
        """(E[x_data | z], E[eps | z]) from the prediction p (module docstring)."""
        kind = self.prediction
        if kind == "epsilon":
            return (z - s * p) / a, p
        if kind == "x0":
            return p, (z - a * p) / s
        if kind == "v":
            norm = a**2 + s**2
            return (a * z - s * p) / norm, (s * z + a * p) / norm
        if kind == "score":
            e = -s * p
            return (z - s * e) / a, e
        det = a * ds - s * da  # velocity: p = da d + ds e
        return (ds * z - s * p) / det, (a * p - da * z) / det

    def describe(self) -> dict[str, object]:
        """A JSON-able description: process, prediction and the interpolant it maps to."""
        out = {**self.process.describe(), "prediction": self.prediction, "interpolant": self.process.interpolant_kind}
        if self.prediction == "edm_denoiser":
            out["sigma_data"] = self.sigma_data
        return out

