"""Shared test setup: deterministic torch. The hypothesis profiles are fmmkit's pytest plugin's:
``fmmkit-ci`` (bounded, the default) and ``HYPOTHESIS_PROFILE=fmmkit-deep`` (thorough)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny nets and small float64 batches run fastest on one torch thread (a second one stalls on a busy
    CPU); use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
