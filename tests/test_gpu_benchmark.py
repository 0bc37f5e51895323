"""benchmarks/gpu.py runs end to end on its CPU path (tiny networks, 8x8 images) and reports every row."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from images_helpers import digits_cache  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def load_gpu_benchmark():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cpu_path_reports_throughput_memory_ratios_and_quality(digits_cache: Path) -> None:  # noqa: F811
    gpu = load_gpu_benchmark()
    body = gpu.main(["--device", "cpu", "--tiny", "--quick", "--steps", "8", "--minutes", "0.02", "--no-write"])
    assert "no GPU (CPU path)" in body
    for model in gpu.MODELS:
        for label, _ in gpu.LOSSES:
            row = re.search(rf"^\| {re.escape(model)} \| {re.escape(label)} \| ([0-9.]+) \| ([0-9.]+) \| nan \|", body, re.M)
            assert row, f"no row for {model} / {label} in\n{body}"
            assert float(row.group(1)) > 0
        fm = re.search(rf"^\| {re.escape(model)} \| flow matching \| [0-9.]+ \| ([0-9.]+) \|", body, re.M)
        assert fm and float(fm.group(1)) == 1.0
    for k in gpu.QUALITY_STEPS:
        assert re.search(rf"^\| flow map, {k} steps? \| [0-9.]+ \|$", body, re.M), body


def test_without_cuda_the_default_device_is_a_one_line_error() -> None:
    gpu = load_gpu_benchmark()
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(SystemExit, match=r"no CUDA device is visible; run it on a GPU machine, or pass --device cpu --tiny"):
        gpu.main(["--quick"])
