"""Non-finite guards: a NaN loss term or gradient stops the run (naming step and term) or skips the step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine_helpers import all_finite, events, nan_term, patch_loss, tiny_spec
from fmmkit.cli import main
from fmmkit.core import LossOutput
from fmmkit.training.checkpoint import list_checkpoints
from fmmkit.training.errors import TrainingError
from fmmkit.training.loop import train


def test_nan_loss_term_stops_with_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    patch_loss(monkeypatch, lambda step, out: nan_term(out, "lagrangian") if step == 5 else out)
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        train(tiny_spec(checkpoint={"every": 2}), out=out, progress=False, pictures=False)
    message = str(info.value)
    assert "step 6" in message and "'lagrangian'" in message and "train.on_nonfinite" in message, message
    assert "\n" not in message
    saved = list_checkpoints(out)
    assert [s for s, _ in saved] == [2, 4], "a checkpoint was written at or after the bad step"
    assert str(saved[-1][1]) in message
    assert all_finite(saved[-1][1] / "model.safetensors")
    assert events(out)[-1]["event"] == "stopped"
    assert not (out / "model.safetensors").exists()


def test_cli_prints_the_nan_stop_as_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from fmmkit.spec.toml_writer import dumps

    patch_loss(monkeypatch, lambda step, out: nan_term(out, "diagonal") if step == 1 else out)
    toml = tmp_path / "spec.toml"
    toml.write_text(dumps(tiny_spec()))
    assert main(["train", str(toml), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step 2: non-finite loss term 'diagonal'" in err[0], err


def test_skip_drops_the_bad_steps_and_finishes(tmp_path: Path, monkeypatch) -> None:
    patch_loss(monkeypatch, lambda step, out: nan_term(out, "lagrangian") if step in (2, 3) else out)
    out = tmp_path / "run"
    train(tiny_spec(train={"on_nonfinite": "skip"}), out=out, progress=False, pictures=False)
    skipped = [r["step"] for r in events(out) if r["event"] == "skipped"]
    assert skipped == [3, 4]
    for name in ("model.safetensors", "ema-0.9.safetensors"):
        assert all_finite(out / name)


def test_nan_gradient_with_a_finite_loss_names_the_parameter(tmp_path: Path, monkeypatch) -> None:
    def nan_gradient(step: int, out: LossOutput) -> LossOutput:
        if step != 2:
            return out
        # sqrt at 0 is finite but its derivative is infinite: the gradient becomes inf * 0 = nan
        return LossOutput(out.loss + torch.sqrt(out.loss * 0.0), out.metrics)

    patch_loss(monkeypatch, nan_gradient)
    with pytest.raises(TrainingError, match=r"step 3: non-finite gradient .* parameter 'backbone\.") as info:
        train(tiny_spec(), out=tmp_path / "run", progress=False, pictures=False)
    assert "finite loss" in str(info.value)
