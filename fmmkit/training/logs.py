"""What a run reports while it trains: JSON lines always, TensorBoard when installed, a progress bar.

``metrics.jsonl`` gets one record per ``train.log_every`` steps ({"step": steps done, "loss": ...,
each loss term, "lr", "grad_norm", "samples_per_s", "elapsed_s"}); ``events.jsonl`` gets
{"event": "checkpoint" | "resume" | "skipped" | "stopped" | "interrupted", "step": ..., ...}. Only
rank 0 writes. On resume, records past the checkpoint's step (from the interrupted attempt) are
dropped from both.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fmmkit.runs.files import atomic_write_text
from fmmkit.runs.layout import EVENTS_FILE, METRICS_FILE, TENSORBOARD_DIR

def _tensorboard_writer(out: Path) -> Any | None:
    """A SummaryWriter under ``out/tensorboard``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(out / TENSORBOARD_DIR))


def truncate_records(path: Path, step: int) -> None:
    """Drop the records of ``path`` whose step is beyond ``step`` (a resumed run rewrites them)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class RunLog:
    """JSON lines, TensorBoard and tqdm for one run; a no-op on ranks other than 0."""

    def __init__(self, out: Path, *, name: str, total: int, start: int, active: bool, progress: bool,
                 tensorboard: bool) -> None:
        self.active = active
        if active and start > 0:
            truncate_records(out / METRICS_FILE, start)
            truncate_records(out / EVENTS_FILE, start)
        self.file = open(out / METRICS_FILE, "a") if active else None
        self.events = open(out / EVENTS_FILE, "a") if active else None
        self.writer = _tensorboard_writer(out) if active and tensorboard else None
        self.bar = tqdm(total=total, initial=start, desc=name, disable=not (active and progress),
                        dynamic_ncols=True, leave=False, unit="step")
        self.start_time = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the log was opened."""
        return time.perf_counter() - self.start_time

    @staticmethod
    def _write(file: Any, record: dict[str, Any]) -> None:
        if file is not None:
            file.write(json.dumps(record) + "\n")
            file.flush()

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """A metrics record at ``step`` (steps done), to JSON, TensorBoard and the progress bar."""
        self._write(self.file, {"step": step, **values, "elapsed_s": round(self.elapsed(), 3)})
        if self.writer is not None:
            for key, value in values.items():
                if math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, step)
        loss = values.get("loss", float("nan"))
        self.bar.set_postfix(loss=f"{loss:.4g}", samples_s=f"{values.get('samples_per_s', 0):,.0f}", refresh=False)

    def event(self, step: int, event: str, **info: Any) -> None:
        """An event record (checkpoint, resume, skipped step, stop)."""
        self._write(self.events, {"event": event, "step": step, **info})

    def advance(self, n: int = 1) -> None:
        """Move the progress bar."""
        self.bar.update(n)

    def close(self) -> None:
        """Flush and close everything."""
        self.bar.close()
        for file in (self.file, self.events):
            if file is not None:
                file.close()
        self.file = self.events = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
