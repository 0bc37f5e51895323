"""Issue 13 goal 2 at a small budget: the built-in LSD recipe, trained from samples of an 8-D Gaussian,
approaches the exact affine flow map (benchmarks/gaussian8d.py runs the 3000-step version)."""

from __future__ import annotations

from pathlib import Path

import pytest

import fmmkit
from fmmkit.runs import load_run
from fmmkit.spec.builtin import builtin_spec_path
from fmmkit.spec.loader import apply_overrides, read_toml
from fmmkit.verification.gaussian_fit import gaussian_fit

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

DATA = {"kind": "gaussian", "dim": 8, "mean": [1.0, -1.0, 0.5, -0.5, 2.0, 0.0, -1.5, 0.25],
        "std": [0.5, 1.0, 1.5, 0.3, 2.0, 0.8, 1.2, 0.6], "num_points": 20_000, "data_seed": 0}
BUDGET = ["train.steps=1000", "train.batch_size=256", "train.threads=1", "checkpoint.every=0",
          "log.tensorboard=false", 'eval.metrics=["energy_distance"]']


def test_builtin_lsd_recipe_learns_the_8d_gaussian_map(tmp_path: Path) -> None:
    raw = read_toml(builtin_spec_path("checkerboard_lsd"))
    raw["data"] = DATA
    out = fmmkit.train(apply_overrides(raw, BUDGET), out=tmp_path / "run", progress=False, pictures=False)
    run = load_run(out)
    fit = gaussian_fit(run.model, run.data.exact_flow_map(run.interpolant), run.interpolant)
    # measured here with the recipe of session 9 (60% of the batch on the diagonal), seeds 0 / 1 / 2: map error
    # 0.060 / 0.058 / 0.060, worst std error 0.056 / 0.085 / 0.082, mean error 0.026 / 0.030 / 0.053; session 8's
    # (logit-normal velocity times, gap curriculum, lr 4e-3, beta2 0.99, half the batch on the diagonal):
    # map error 0.076, worst std error 0.095, mean error 0.047 (seed 2: 0.067 / 0.097 / 0.019); at 600 steps
    # 0.156 / 0.45 (the curriculum takes 500 of them), and without the curriculum one seed of three diverged.
    # Earlier: 0.13 / 0.13 / 0.05 at 600 steps with session 4's recipe; 0.28 / 0.62 / 0.08 with the conditional target
    # and lr 1e-3, 0.49 / 2.3 with the former sinusoidal time features: both fail the first two bounds
    assert fit.map_error < 0.2, fit
    assert fit.std_worst < 0.3, fit  # one-step std within [0.7, 1.3] x the truth
    assert fit.mean_error < 0.15, fit
