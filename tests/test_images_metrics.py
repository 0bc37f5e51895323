"""Image metrics: the Frechet distance formula, the cached digits classifier, digits_fd and fid's
messages when torch-fidelity or the Inception weights are missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from images_helpers import digits_cache  # noqa: F401

from fmmkit.core.errors import UserError
from fmmkit.data.digits import Digits, DigitsConfig
from fmmkit.metrics import digits_classifier as dc
from fmmkit.metrics.frechet import frechet_distance, frechet_distance_of_features, gaussian_fit
from fmmkit.metrics.digits_fd import DigitsFrechetDistance
from fmmkit.metrics.fid import FID, FIDConfig, MetricUnavailableError, inception_unavailable

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def test_frechet_distance_of_diagonal_gaussians_is_closed_form() -> None:
    m1, m2 = torch.tensor([0.0, 1.0, 2.0], dtype=F64), torch.tensor([1.0, 1.0, -1.0], dtype=F64)
    a, b = torch.tensor([1.0, 4.0, 0.25], dtype=F64), torch.tensor([9.0, 1.0, 0.25], dtype=F64)
    expected = float((m1 - m2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())  # 10 + 4 + 1 + 0
    assert frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(15.0)


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances() -> None:
    import scipy.linalg

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 6, generator=g, dtype=F64), torch.randn(6, 6, generator=g, dtype=F64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(6, dtype=F64), b @ b.T + 0.1 * torch.eye(6, dtype=F64)
    mu1, mu2 = torch.randn(6, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
    cross = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real.trace()
    expected = float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace()) - 2 * cross
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_gaussian_fit_is_the_unbiased_fit() -> None:
    x = torch.randn(50, 3, dtype=F64)
    mu, cov = gaussian_fit(x)
    torch.testing.assert_close(mu, x.mean(0))
    torch.testing.assert_close(cov, torch.cov(x.T))
    assert frechet_distance_of_features(x, x) == pytest.approx(0.0, abs=1e-9)


def test_classifier_training_is_reproducible() -> None:
    first, _ = dc.train_digits_classifier(seed=3, epochs=1)
    second, _ = dc.train_digits_classifier(seed=3, epochs=1)
    other, _ = dc.train_digits_classifier(seed=4, epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(first.parameters(), other.parameters()))


def test_classifier_is_cached_with_its_accuracy(digits_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import safe_open

    model = dc.load_digits_classifier(seed=0)
    path = dc.classifier_path(0)
    assert path.parent == digits_cache and path.is_file()
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["recipe"] == dc.RECIPE and float(meta["heldout_accuracy"]) >= 0.93
    _, _, x_test, y_test = dc.digits_split(0)
    assert dc.accuracy(model, x_test, y_test) == pytest.approx(float(meta["heldout_accuracy"]), abs=1e-4)

    def no_training(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the cached classifier should be loaded, not retrained")

    monkeypatch.setattr(dc, "train_digits_classifier", no_training)
    again = dc.load_digits_classifier(seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


def test_digits_fd_orders_data_blur_and_noise(digits_cache: Path) -> None:
    metric = DigitsFrechetDistance()
    source = Digits(DigitsConfig())
    g = torch.Generator().manual_seed(0)
    a, b = source.sample(1500, g).x1, source.sample(1500, g).x1
    same = metric(a, b)
    blurred = metric(torch.nn.functional.avg_pool2d(a, 3, stride=1, padding=1), b)
    noise = metric(torch.rand(1500, 1, 8, 8, generator=g) * 2 - 1, b)
    assert 0 <= same < 0.05 * blurred and blurred < noise
    big = Digits(DigitsConfig(size=16)).sample(1500, g).x1  # other sizes are resized to 8x8 first
    assert metric(big, b) < 0.5 * blurred  # (up- then down-sampling blurs a little)
    with pytest.raises(ValueError, match="one-channel"):
        metric(torch.zeros(4, 3, 8, 8), b)


def test_fid_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from fmmkit.metrics import fid as fid_module

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(fid_module.importlib.util, "find_spec", lambda name: None if name == "torch_fidelity" else real_find_spec(name))
    with pytest.raises(MetricUnavailableError) as info:
        FID()(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    assert isinstance(info.value, UserError) and "\n" not in str(info.value) and "torch-fidelity" in str(info.value)

    monkeypatch.setattr(fid_module.importlib.util, "find_spec", lambda name: object())  # "installed"
    weights = tmp_path / "inception.pth"
    reason = inception_unavailable(str(weights))
    assert reason is not None and str(weights) in reason and "never downloads" in reason
    with pytest.raises(MetricUnavailableError, match="Inception weights not found"):
        FID(FIDConfig(weights=str(weights)))(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
