"""Every file name of a run directory, in one place.

    RUN_DIR/
      spec.toml                  the resolved spec (every default filled in; the run is reproducible from it)
      model.safetensors          the raw weights
      ema-LABEL.safetensors      one per EMA (sampling and evaluation use the one ``ema.sample_with`` names)
      metrics.jsonl              training metrics, one JSON object per logged step
      events.jsonl               checkpoints, resumes, skipped steps, stops
      run.json                   versions, device, processes, steps, seconds, final metrics, plugins used
      samples.png                the data, the flow map at each step count, the ODE
      eval.json, verify.json     written by ``fmmkit eval`` and ``fmmkit verify``
      checkpoints/step-N/        resumable state (see :mod:`fmmkit.training.checkpoint`)
      pictures/step-N.png        pictures during training (``log.pictures_every``)
      tensorboard/               TensorBoard events when enabled
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fmmkit.spec.errors import SpecError

if TYPE_CHECKING:
    from fmmkit.spec.schema import EMAConfig, Spec

SPEC_FILE = "spec.toml"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
RUN_INFO_FILE = "run.json"
SAMPLES_FILE = "samples.png"
EVAL_FILE = "eval.json"
VERIFY_FILE = "verify.json"
CHECKPOINT_DIR = "checkpoints"
PICTURES_DIR = "pictures"
TENSORBOARD_DIR = "tensorboard"
RAW = "raw"

#: The files that make a directory a trained run.
RUN_MARKERS = (SPEC_FILE, WEIGHTS_FILE)


def weights_file(label: str) -> str:
    """The run-directory file of the weights named ``label`` ("raw" or an EMA label such as "ema-0.999")."""
    return WEIGHTS_FILE if label == RAW else f"{label}.safetensors"


def picture_file(step: int) -> str:
    """pictures/step-000001000.png: the pictures drawn at one training step."""
    return f"{PICTURES_DIR}/step-{step:09d}.png"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def ema_labels(config: EMAConfig) -> list[str]:
    """``ema-0.999`` for a decay, ``ema-hl500000`` for a half-life of 500000 samples."""
    return [f"ema-{_number(d)}" for d in config.decays] + [f"ema-hl{_number(h)}" for h in config.half_lives]


def sampling_label(spec: Spec) -> str:
    """The weights sampling and evaluation use: ``ema.sample_with``, "auto" being the first EMA (else raw)."""
    labels = ema_labels(spec.ema)
    choice = spec.ema.sample_with
    if choice == "auto":
        return labels[0] if labels else RAW
    if choice != RAW and choice not in labels:
        raise SpecError([f"{spec.source}: ema.sample_with: '{choice}' is not one of this run's weights; "
                         f"use \"auto\", \"raw\" or one of {labels}"])
    return choice
