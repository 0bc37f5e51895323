"""Every (prediction, process) conversion gives back fmmkit's exact Gaussian velocity.

For data N(m, diag(sd^2)) the process state z = a x_data + s eps is Gaussian, and (closed forms,
written independently of fmmkit.conversion here)

    E[x_data | z] = m + a sd^2 / (a^2 sd^2 + s^2) (z - a m),      E[eps | z] = s / (a^2 sd^2 + s^2) (z - a m),

so the exact network of each prediction type is: epsilon E[eps|z]; x0 E[x_data|z]; v a E[eps|z] - s E[x_data|z];
score -(z - a m) / (a^2 sd^2 + s^2); velocity a' E[x_data|z] + s' E[eps|z] (derivatives in the natural time,
written out below); EDM's raw F = (D - c_skip x) / c_out with D = E[x_data|x]. Each fake
network below recovers its noise level from the model time it is given (its own inverse of the time
map) and returns that closed form; the adapter must reproduce fmmkit.exact's b_t(x) to 1e-6 relative.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from fmmkit.conversion import (
    PREDICTIONS,
    Conversion,
    LinearProcess,
    Process,
    VEProcess,
    VPContinuous,
    VPDiscrete,
    discrete_alpha_bars,
)
from fmmkit.exact import GaussianFlowMap

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN = torch.tensor([0.7, -1.2, 0.1], dtype=torch.float64)
STD = torch.tensor([0.5, 1.3, 0.05], dtype=torch.float64)
SIGMA_DATA = 0.5

#: natural time tau -> (a, s, da/dtau, ds/dtau) of z = a x_data + s eps
Coefficients = Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


def vp(alpha_bar: Callable[[Tensor], tuple[Tensor, Tensor]]) -> Coefficients:
    """a = sqrt(abar), s = sqrt(1 - abar): da = abar' / (2 a), ds = -abar' / (2 s)."""
    def coeffs(tau: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        abar, d_abar = alpha_bar(tau)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        return a, s, d_abar / (2 * a), -d_abar / (2 * s)

    return coeffs


def linear_abar(tau: Tensor, n: int = 1000, b0: float = 1e-4, b1: float = 0.02) -> tuple[Tensor, Tensor]:
    abar = torch.exp(-n * (b0 * tau + (b1 - b0) * tau**2 / 2))
    return abar, -n * (b0 + (b1 - b0) * tau) * abar


def cosine_abar(tau: Tensor, o: float = 0.008) -> tuple[Tensor, Tensor]:
    u, c0 = (tau + o) / (1 + o) * math.pi / 2, math.cos(o / (1 + o) * math.pi / 2)
    return (torch.cos(u) / c0) ** 2, -2 * torch.cos(u) * torch.sin(u) * (math.pi / 2) / (1 + o) / c0**2


def discrete(alpha_bars: Tensor) -> Coefficients:
    """Fractional timestep k -> noise level: log sigma linear between integer timesteps (np.interp)."""
    acp = alpha_bars.double().numpy()
    log_sigmas = 0.5 * np.log((1 - acp) / acp)

    def coeffs(k: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sigma = torch.from_numpy(np.exp(np.interp(k.numpy(), np.arange(len(acp)), log_sigmas)))
        slope = torch.from_numpy(np.diff(log_sigmas)[np.clip(np.floor(k.numpy()).astype(int), 0, len(acp) - 2)])
        a, s = 1 / torch.sqrt(1 + sigma**2), sigma / torch.sqrt(1 + sigma**2)
        d_sigma = sigma * slope  # d sigma / dk
        return a, s, -sigma * a**3 * d_sigma, a**3 * d_sigma

    return coeffs


def ve(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return torch.ones_like(sigma), sigma, torch.zeros_like(sigma), torch.ones_like(sigma)


def straight(noise_at_1: bool) -> Coefficients:
    def coeffs(tau: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        one = torch.ones_like(tau)
        return (1 - tau, tau, -one, one) if noise_at_1 else (tau, 1 - tau, one, -one)

    return coeffs


#: name -> (process, its coefficients at natural time, model time -> natural time)
CASES: dict[str, tuple[Process, Coefficients, Callable[[Tensor], Tensor]]] = {
    "linear_noise_at_1": (LinearProcess("noise_at_1", time_scale=1000.0), straight(True), lambda m: m / 1000),
    "linear_noise_at_0": (LinearProcess("noise_at_0"), straight(False), lambda m: m),
    "vp_linear_continuous": (VPContinuous("linear", time_scale=999.0), vp(linear_abar), lambda m: m / 999),
    "vp_cosine_continuous": (VPContinuous("cosine"), vp(cosine_abar), lambda m: m),
    "vp_linear_discrete": (VPDiscrete(discrete_alpha_bars("linear")), discrete(discrete_alpha_bars("linear")), lambda m: m),
    "vp_scaled_linear_discrete": (VPDiscrete(discrete_alpha_bars("scaled_linear", 1000, 0.00085, 0.012)),
                                  discrete(discrete_alpha_bars("scaled_linear", 1000, 0.00085, 0.012)), lambda m: m),
    "vp_cosine_discrete": (VPDiscrete(discrete_alpha_bars("cosine")), discrete(discrete_alpha_bars("cosine")), lambda m: m),
    "ve": (VEProcess(0.01, 50.0, name="ve"), ve, lambda m: m),
    "edm": (VEProcess(0.002, 80.0, time_scale=2.0), ve, lambda m: m / 2),
}


def posterior(z: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """(E[x_data | z], E[eps | z]) for x_data ~ N(MEAN, STD^2), per coordinate; a, s are (B, 1)."""
    var = a**2 * STD**2 + s**2
    centred = z - a * MEAN
    return MEAN + a * STD**2 / var * centred, s / var * centred


def exact_network(prediction: str, coeffs: Coefficients, natural: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """The network that predicts ``prediction`` exactly for the Gaussian data."""

    def network(inp: Tensor, model_time: Tensor) -> Tensor:
        assert inp.dtype == torch.float64 and model_time.shape == (inp.shape[0],)
        if prediction == "edm_denoiser":
            sigma = torch.exp(4 * model_time)[:, None]  # c_noise = ln(sigma) / 4
            c = torch.sqrt(sigma**2 + SIGMA_DATA**2)
            z = inp * c  # the input was c_in x
            d, _ = posterior(z, torch.ones_like(sigma), sigma)
            c_skip, c_out = SIGMA_DATA**2 / c**2, sigma * SIGMA_DATA / c
            return (d - c_skip * z) / c_out
        tau = natural(model_time)
        a, s, da, ds = (v[:, None] for v in coeffs(tau))
        d, e = posterior(inp, a, s)
        if prediction == "epsilon":
            return e
        if prediction == "x0":
            return d
        if prediction == "v":
            return a * e - s * d
        if prediction == "score":
            return -(inp - a * MEAN) / (a**2 * STD**2 + s**2)
        return da * d + ds * e

    return network


def valid_pairs() -> list[tuple[str, str]]:
    return [(case, p) for case in CASES for p in PREDICTIONS
            if p != "edm_denoiser" or isinstance(CASES[case][0], VEProcess)]


@pytest.mark.parametrize(("case", "prediction"), valid_pairs())
def test_conversion_gives_the_exact_gaussian_velocity(case: str, prediction: str) -> None:
    process, coeffs, natural = CASES[case]
    conversion = Conversion(process, prediction, sigma_data=SIGMA_DATA)  # type: ignore[arg-type]
    exact = GaussianFlowMap(conversion.interpolant, MEAN, STD)
    lo, hi = conversion.time_range()
    g = torch.Generator().manual_seed(0)
    t = lo + (hi - lo) * (0.002 + 0.996 * torch.rand(512, generator=g, dtype=torch.float64))
    spread = torch.sqrt(exact._moments(t, torch.zeros(512, 3, dtype=torch.float64))[1])
    x = exact._moments(t, torch.zeros(512, 3, dtype=torch.float64))[0] + 2 * spread * torch.randn(512, 3, generator=g, dtype=torch.float64)
    got = conversion.velocity(exact_network(prediction, coeffs, natural), x, t)
    want = exact.velocity(x, t)
    relative = (got - want).norm(dim=1) / want.norm(dim=1)
    assert float(relative.max()) < 1e-6, f"{case}/{prediction}: worst relative error {float(relative.max()):.2e}"


def test_every_prediction_and_process_is_covered() -> None:
    covered = {p for _, p in valid_pairs()}
    assert covered == set(PREDICTIONS)
    assert {type(CASES[c][0]).__name__ for c in CASES} == {"LinearProcess", "VPContinuous", "VPDiscrete", "VEProcess"}


def test_processes_map_to_linear_or_trig_with_their_time_ranges() -> None:
    assert Conversion(LinearProcess("noise_at_1"), "velocity").time_range() == (0.0, 1.0)
    assert type(LinearProcess().interpolant()).__name__ == "LinearInterpolant"
    for process in (VPContinuous(), VPDiscrete(discrete_alpha_bars("linear")), VEProcess()):
        assert type(process.interpolant()).__name__ == "TrigInterpolant"
    # EDM's sigma in [0.002, 80] is t = (2 / pi) arctan(1 / sigma) in [0.00796, 0.99873]
    lo, hi = VEProcess(0.002, 80.0).time_range()
    assert lo == pytest.approx(2 / math.pi * math.atan(1 / 80)) and hi == pytest.approx(2 / math.pi * math.atan(500))
    # epsilon divides by a = 0 at pure noise: kept EDGE inside even where the process reaches t = 0
    assert Conversion(VPContinuous("cosine"), "epsilon").time_range()[0] == pytest.approx(1e-4)


def test_outside_the_covered_times_the_nearest_covered_time_is_used() -> None:
    process, coeffs, natural = CASES["edm"]
    conversion = Conversion(process, "x0")
    network = exact_network("x0", coeffs, natural)
    x = torch.randn(4, 3, dtype=torch.float64)
    lo, hi = conversion.time_range()
    below = conversion.velocity(network, x, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(below, conversion.velocity(network, x, torch.full((4,), lo, dtype=torch.float64)))
    above = conversion.velocity(network, x, torch.ones(4, dtype=torch.float64))
    assert torch.equal(above, conversion.velocity(network, x, torch.full((4,), hi, dtype=torch.float64)))


def test_linear_velocity_conversion_is_exact_in_float32() -> None:
    """b_t(x) = -u(x, 1 - t) for noise at 1 and u(x, t) for noise at 0, bit for bit."""
    u = torch.randn(5, 2)
    seen: list[Tensor] = []

    def network(z: Tensor, m: Tensor) -> Tensor:
        seen.append(m)
        return u

    t = torch.rand(5)
    x = torch.randn(5, 2)
    assert torch.equal(Conversion(LinearProcess("noise_at_1", 1000.0), "velocity").velocity(network, x, t), -u)
    torch.testing.assert_close(seen[-1], (1 - t.double()).float() * 1000, rtol=1e-6, atol=1e-4)
    assert torch.equal(Conversion(LinearProcess("noise_at_0"), "velocity").velocity(network, x, t), u)
    assert torch.equal(seen[-1], t)


@pytest.mark.parametrize(("schedule", "start", "end"), [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012),
                                                         ("cosine", 1e-4, 0.02)])
def test_discrete_tables_are_diffusers_tables(schedule: str, start: float, end: float) -> None:
    import diffusers
    name = {"cosine": "squaredcos_cap_v2"}.get(schedule, schedule)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=start, beta_end=end, beta_schedule=name)
    assert torch.equal(discrete_alpha_bars(schedule, 1000, start, end), theirs.alphas_cumprod)  # type: ignore[arg-type]


def test_bad_process_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VEProcess(80.0, 0.002)
    with pytest.raises(ValueError, match="scaled_linear exists only as a discrete table"):
        VPContinuous("scaled_linear")
    with pytest.raises(ValueError, match="decrease strictly"):
        VPDiscrete(torch.tensor([0.9, 0.9, 0.5]))
    with pytest.raises(ValueError, match="process = \"edm\""):
        Conversion(LinearProcess(), "edm_denoiser")
