"""How many torch threads a CPU training step uses: ``train.threads = "auto"`` (the default) chooses them.

On a machine whose cores other processes also use, a torch thread that shares a core with another
busy process makes every parallel region wait for it: with two threads on two cores and one other
CPU-bound process, a training run took 2.4-2.8x its idle time, while one thread kept its idle pace;
idle, two threads were 1.3x faster than one (benchmarks/threads.py; RESULTS.md, "Threads under load").
So the choice is the number of cores no other process is using:

    threads = max(1, round(usable cores - cores busy with other processes)),

usable cores being the process's CPU affinity capped by a cgroup CPU quota, and the busy share being
the CPU time of those cores in /proc/stat minus this process's own over a window: 0.1 s before the first step, then
the time since the previous check, every ``interval`` seconds, so that a run adapts when other work
starts or stops. The thread count does not change an MLP run's results (the CPU kernels split work
over output elements; tests/test_threads.py trains with 1 and 2 threads and compares the weights bit
for bit); convolutions and group norms reduce in thread-dependent order, so a UNet's weights can
differ in float rounding (7e-9 after three digits steps here): pin ``train.threads`` to reproduce
such a run bit for bit under a different load. Off Linux (no /proc/stat) it uses the usable cores.
A positive ``train.threads`` is used as given (0, in specs written before "auto", means "auto").
The trainer writes the first choice and every change as a ``threads`` event to events.jsonl.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

#: seconds between two checks of the load while training
CHECK_INTERVAL = 5.0
#: the first check, before any step, measures the load over this window
FIRST_WINDOW = 0.1
_STAT = Path("/proc/stat")


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 quota (``cpu.max``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


@dataclass(frozen=True)
class CpuSample:
    """A moment's counters: wall clock (s), busy CPU time of the usable cores, summed (s, /proc/stat: user,
    nice, system, irq, softirq, steal), and this process's CPU time (s)."""

    wall: float
    busy: float
    own: float


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return None


def read_sample() -> CpuSample | None:
    """The counters now (busy time summed over the CPUs this process may use: in a container /proc/stat
    lists the host's), or None where /proc/stat cannot be read."""
    try:
        lines = _STAT.read_text().splitlines()
    except OSError:
        return None
    allowed = _allowed_cpus()
    busy_ticks = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if allowed is not None and int(name[3:]) not in allowed:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        busy_ticks += user + nice + system + irq + softirq + steal
    return CpuSample(time.perf_counter(), busy_ticks / os.sysconf("SC_CLK_TCK"), time.process_time())


def others_busy(before: CpuSample, after: CpuSample) -> float:
    """Cores kept busy by other processes between two samples (0 when the window is empty)."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    return max(0.0, ((after.busy - before.busy) - (after.own - before.own)) / wall)


def choose_threads(cores: int, busy_elsewhere: float) -> int:
    """max(1, round(cores - busy_elsewhere)), at most ``cores``."""
    return max(1, min(cores, math.floor(cores - busy_elsewhere + 0.5)))


class ThreadGovernor:
    """Sets torch's thread count for a training run and keeps it matched to the free cores.

    ``ThreadGovernor(train.threads)`` makes the first choice; ``tick()`` after each step re-checks every
    ``interval`` seconds (a fixed ``threads > 0`` is set once and never changed; "auto" or 0 follow the load).

    Example:
        >>> governor = ThreadGovernor(1)
        >>> governor.threads, torch.get_num_threads()
        (1, 1)
        >>> governor.tick()  # a fixed count stays
        1
    """

    def __init__(self, requested: int | Literal["auto"] = "auto", interval: float = CHECK_INTERVAL,
                 first_window: float = FIRST_WINDOW) -> None:
        self.auto = requested == "auto" or int(requested) <= 0
        self.cores = usable_cores()
        self.interval = interval
        self.history: list[tuple[float, int]] = []  # (busy cores elsewhere, threads chosen) at each check
        self.last: CpuSample | None = None
        if not self.auto:
            self._set(int(requested), 0.0)
            return
        first = read_sample()
        if first is not None:
            time.sleep(first_window)
        self._check(first)

    def _set(self, threads: int, busy: float) -> None:
        self.threads = threads
        self.history.append((busy, threads))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def _check(self, before: CpuSample | None) -> None:
        now = read_sample()
        busy = others_busy(before, now) if before is not None and now is not None else 0.0
        self._set(choose_threads(self.cores, busy), busy)
        self.last = now

    def tick(self) -> int:
        """Re-check the load when ``interval`` seconds have passed since the last check; the thread count."""
        if self.auto and self.last is not None and time.perf_counter() - self.last.wall >= self.interval:
            self._check(self.last)
        return self.threads
