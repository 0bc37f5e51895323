"""``train.threads = "auto"``: the thread count follows the cores other processes leave free (fmmkit.training.threads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fmmkit.training import threads as threads_module
from fmmkit.training.threads import CpuSample, ThreadGovernor, choose_threads, others_busy, read_sample


@pytest.fixture(autouse=True)
def _restore_threads() -> None:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores, busy, expected", [(2, 0.0, 2), (2, 0.3, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 3.5, 1),
                                                    (4, 1.2, 3), (1, 0.0, 1), (8, 0.0, 8)])
def test_the_choice_is_the_free_cores_rounded(cores: int, busy: float, expected: int) -> None:
    assert choose_threads(cores, busy) == expected


def test_busy_elsewhere_is_machine_time_minus_our_own() -> None:
    before = CpuSample(wall=10.0, busy=100.0, own=5.0)
    after = CpuSample(wall=12.0, busy=103.0, own=6.0)  # 3 busy core-seconds in 2 s, 1 of them ours
    assert others_busy(before, after) == pytest.approx(1.0)
    assert others_busy(after, after) == 0.0


def test_proc_stat_is_read_for_the_cores_this_process_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  900 0 90 0 0 0 0 0 0 0\n"
                    "cpu0 100 10 20 500 7 1 2 3 0 0\n"
                    "cpu1 200 0 40 500 0 0 0 0 0 0\n"
                    "cpu2 600 0 30 500 0 0 0 0 0 0\n"
                    "intr 12345\n")
    monkeypatch.setattr(threads_module, "_STAT", stat)
    monkeypatch.setattr(threads_module, "_allowed_cpus", lambda: {0, 1})
    monkeypatch.setattr(threads_module.os, "sysconf", lambda name: 100)
    sample = read_sample()
    assert sample is not None
    assert sample.busy == pytest.approx((100 + 10 + 20 + 1 + 2 + 3 + 200 + 40) / 100)  # idle and iowait excluded
    monkeypatch.setattr(threads_module, "_STAT", tmp_path / "missing")
    assert read_sample() is None


class FakeMachine:
    """read_sample() for a machine whose other processes keep ``busy`` cores busy; we use none."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.busy_total = 0.0
        self.busy = 0.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.busy_total += self.busy * seconds

    def sample(self) -> CpuSample:
        return CpuSample(self.wall, self.busy_total, 0.0)


def test_the_governor_follows_other_work_that_starts_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = FakeMachine()
    monkeypatch.setattr(threads_module, "read_sample", machine.sample)
    monkeypatch.setattr(threads_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads_module.time, "sleep", machine.advance)
    monkeypatch.setattr(threads_module.time, "perf_counter", lambda: machine.wall)
    governor = ThreadGovernor(0, interval=5.0)
    assert governor.threads == 2 and torch.get_num_threads() == 2
    machine.busy = 1.0  # another CPU-bound process starts
    machine.advance(3.0)
    assert governor.tick() == 2  # not yet re-checked
    machine.advance(3.0)
    assert governor.tick() == 1 and torch.get_num_threads() == 1
    machine.busy = 0.0
    machine.advance(6.0)
    assert governor.tick() == 2
    assert [threads for _, threads in governor.history] == [2, 1, 2]


def test_a_fixed_thread_count_is_set_once_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads_module, "read_sample", lambda: pytest.fail("a fixed count reads no load"))
    governor = ThreadGovernor(1)
    assert torch.get_num_threads() == 1 and governor.tick() == 1


def test_training_results_do_not_depend_on_the_thread_count(tmp_path: Path) -> None:
    """What lets the count follow the load: an MLP run trains to the same bits with 1 and 2 threads."""
    import fmmkit
    from safetensors.torch import load_file

    spec = {"name": "threads", "data": {"kind": "checkerboard"},
            "model": {"kind": "mlp", "width": 64, "depth": 3}, "loss": {"kind": "lagrangian_self_distillation"},
            "train": {"steps": 4, "batch_size": 2048, "device": "cpu", "log_every": 2},
            "checkpoint": {"every": 0}, "log": {"tensorboard": False}}
    weights = []
    for n in (1, 2):
        run = fmmkit.train({**spec, "train": {**spec["train"], "threads": n}}, out=tmp_path / str(n), progress=False,
                           pictures=False)
        weights.append(load_file(str(run / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
