"""One-command GPU benchmark (issue 13, goal 6): throughput, peak memory and a timed digits quality run.

On a CUDA machine with no network:

    python benchmarks/gpu.py            # full: compiled steps, 5-minute digits run (~25 min)
    python benchmarks/gpu.py --quick    # eager steps, 1-minute digits run (< 4 minutes)

1. Throughput. The CIFAR-10 UNet and DiT-B/2 of the built-in specs cifar10_unet_lsd and
   cifar10_dit_b2_lsd (their [model] tables and batch 128) on synthetic 32x32 RGB images
   (smooth random fields written to a temporary .npy; nothing is downloaded), trained by fmmkit's own
   trainer with flow matching, LSD, MeanFlow and LMD (distilling this benchmark's flow-matching run);
   bf16 autocast (``train.precision = "auto"``), ``[compile]`` on (full) or off (``--quick``), the
   ``xformers`` attention backend where the plugin and xformers are installed (``sdpa`` otherwise; the
   JVP passes use ``forward_ad`` either way). Images/s is the median over the trainer's log windows
   after the first (which holds the compile); peak GPU memory is ``torch.cuda.max_memory_allocated``
   over the run; the cost ratio is flow matching's images/s over the loss's.
2. Quality: LSD on the built-in digits with the digits UNet of the built-in digits_teacher spec for
   ``--minutes`` minutes of training (steps from a short calibration run), then ``fmmkit eval``'s
   digits Frechet distance of the flow map at 1, 2, 4 and 8 steps.

Writes the "GPU benchmark" section of benchmarks/RESULTS.md only when it ran on CUDA. ``--device cpu
--tiny`` runs the same code with tiny networks on 8x8 images (the test suite does, to keep the script
working on machines without a GPU); its figures are not GPU figures and are never written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TITLE = "GPU benchmark"
#: the built-in specs (fmmkit/specs/) whose [model] tables the throughput rows train
MODELS = {"UNet (CIFAR-10)": "cifar10_unet_lsd", "DiT-B/2": "cifar10_dit_b2_lsd"}
LOSSES = (("flow matching", "flow_matching"), ("LSD", "lagrangian_self_distillation"), ("MeanFlow", "meanflow"),
          ("LMD", "lagrangian_distillation"))
TINY_MODELS = {"UNet (CIFAR-10)": {"kind": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                   "attention_resolutions": [4], "groups": 4, "num_heads": 2, "time_dim": 8,
                                   "dropout": 0.0},
               "DiT-B/2": {"kind": "dit", "patch_size": 2, "hidden_size": 16, "depth": 1, "num_heads": 2, "time_dim": 8}}
QUALITY_STEPS = [1, 2, 4, 8]


def synthetic_images(path: Path, n: int, size: int, channels: int = 3, seed: int = 0) -> Path:
    """n smooth random images in [-1, 1] (bilinear upsampling of 4x4 Gaussian noise), saved as .npy."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, channels, 4, 4, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = images / images.abs().amax(dim=(1, 2, 3), keepdim=True)
    np.save(path, images.numpy().astype(np.float32))
    return path


def attention_backend() -> str:
    """``xformers`` where the plugin is installed and can run here, else ``sdpa``."""
    from fmmkit.registry import get_registry

    registry = get_registry()
    if "xformers" not in registry.names("attention_backend"):
        return "sdpa"
    return "xformers" if registry.get("attention_backend", "xformers").component.unavailable_reason() is None else "sdpa"


def builtin_table(name: str) -> dict[str, Any]:
    """The TOML of a built-in spec (fmmkit/specs/NAME.toml), as written."""
    from fmmkit.spec.builtin import builtin_spec_path

    return tomllib.loads(builtin_spec_path(name).read_text())


def model_table(name: str, tiny: bool) -> dict[str, Any]:
    if tiny:
        return dict(TINY_MODELS[name])
    table = builtin_table(MODELS[name])["model"]
    return {**table, "attention": attention_backend(), "forward_ad_attention": "forward_ad"}


def spec(name: str, model: dict[str, Any], loss: str, data: dict[str, Any], steps: int, batch: int, device: str,
         compiled: bool, teacher: Path | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name, "data": data, "interpolant": {"kind": "linear"}, "model": model, "loss": {"kind": loss},
        "optim": {"lr": 1e-4, "grad_clip": 1.0},
        "train": {"steps": steps, "batch_size": batch, "seed": 0, "device": device, "precision": "auto",
                  "log_every": max(1, steps // 4), "threads": "auto" if device.startswith("cuda") else 1},
        "checkpoint": {"every": 0}, "log": {"tensorboard": False}, "compile": {"enabled": compiled},
    }
    if teacher is not None:
        out["teacher"] = {"run": str(teacher)}
    return out


def timed_run(spec_dict: dict[str, Any], out: Path) -> dict[str, float]:
    """images/s (median of the log windows after the first), the first window's extra seconds (compile),
    peak GPU memory (MB, CUDA only)."""
    import fmmkit

    cuda = spec_dict["train"]["device"].startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    fmmkit.train(spec_dict, out=out, progress=False, pictures=False, overwrite=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
    steady = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]
    window = spec_dict["train"]["log_every"] * spec_dict["train"]["batch_size"]
    return {"images_per_s": steady, "first_window_extra_s": max(0.0, window / rates[0] - window / steady),
            "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")}


def throughput_rows(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    size = 8 if args.tiny else 32
    data = {"kind": "npy", "path": str(synthetic_images(tmp / "images.npy", 512 if args.tiny else 4096, size))}
    batch = 8 if args.tiny else 128
    rows = []
    for model_name in MODELS:
        model = model_table(model_name, args.tiny)
        teacher = None
        for label, loss in LOSSES:
            out = tmp / f"{model_name.split()[0]}_{loss}"
            s = spec(f"gpu_{loss}", model, loss, data, args.steps, batch, args.device, args.compile,
                     teacher if loss == "lagrangian_distillation" else None)
            started = time.perf_counter()
            got = timed_run(s, out)
            if loss == "flow_matching":
                teacher = out
            rows.append({"model": model_name, "loss": label, **got, "wall_s": time.perf_counter() - started})
            print(f"{model_name} {label}: {got['images_per_s']:.1f} images/s, peak {got['peak_mb']:.0f} MB", flush=True)
    return rows


def quality_rows(args: argparse.Namespace, tmp: Path) -> tuple[int, float, list[tuple[str, float]]]:
    """(steps trained, seconds, [(sampler label, digits_fd)]) of LSD on digits for ``--minutes`` minutes."""
    import fmmkit
    from fmmkit.evaluation import evaluate

    table = builtin_table("digits_teacher")
    model = TINY_MODELS["UNet (CIFAR-10)"] if args.tiny else table["model"]
    base = {"name": "gpu_digits_lsd", "data": table["data"], "interpolant": {"kind": "linear"}, "model": model,
            "loss": {"kind": "lagrangian_self_distillation"}, "optim": table["optim"],
            "train": {"batch_size": table["train"]["batch_size"], "seed": 0, "device": args.device, "log_every": 10,
                      "threads": "auto" if args.device.startswith("cuda") else 1},
            "checkpoint": {"every": 0}, "log": {"tensorboard": False}, "sample": {"steps": QUALITY_STEPS},
            "eval": {"num_samples": 200 if args.tiny else 2000, "metrics": ["digits_fd"], "ode": []},
            "compile": {"enabled": False}}
    calibration = {**base, "train": {**base["train"], "steps": 20}}
    start = time.perf_counter()
    fmmkit.train(calibration, out=tmp / "calibrate", progress=False, pictures=False, overwrite=True)
    per_step = (time.perf_counter() - start) / 20
    steps = max(20, int(args.minutes * 60 / per_step))
    run_spec = {**base, "train": {**base["train"], "steps": steps, "log_every": max(1, steps // 10)}}
    start = time.perf_counter()
    run = fmmkit.train(run_spec, out=tmp / "digits_lsd", progress=False, pictures=False, overwrite=True)
    seconds = time.perf_counter() - start
    rows = evaluate(run)
    return steps, seconds, [(row.label, row.metrics["digits_fd"]) for row in rows]


def report(args: argparse.Namespace, rows: list[dict[str, Any]], quality: tuple[int, float, list[tuple[str, float]]]
           ) -> str:
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "no GPU (CPU path)"
    lines = [f"Device: {gpu}; torch {torch.__version__}; attention backend `{attention_backend()}`; compile "
             f"{'on' if args.compile else 'off'}; bf16 autocast on CUDA. Command: `python benchmarks/gpu.py"
             f"{' --quick' if args.quick else ''} --minutes {args.minutes}`.", "",
             "| model | loss | images/s | x flow matching (cost) | peak GPU memory (MB) | x flow matching | "
             "first window extra s (compile) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        fm = next(r for r in rows if r["model"] == row["model"] and r["loss"] == "flow matching")
        lines.append(f"| {row['model']} | {row['loss']} | {row['images_per_s']:.1f} | "
                     f"{fm['images_per_s'] / row['images_per_s']:.2f} | {row['peak_mb']:.0f} | "
                     f"{row['peak_mb'] / fm['peak_mb']:.2f} | {row['first_window_extra_s']:.1f} |")
    steps, seconds, scores = quality
    lines += ["", f"Digits, LSD with the digits UNet, {steps} steps in {seconds / 60:.1f} min:", "",
              "| sampler | digits_fd |", "|---|---|"]
    lines += [f"| {label} | {fd:.2f} |" for label, fd in scores]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="eager steps, fewer of them, a 1-minute digits run")
    parser.add_argument("--minutes", type=float, default=None, help="digits training minutes (5; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="steps per throughput run (60; 12 with --quick)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny networks on 8x8 images (the CPU test path)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    args.minutes = args.minutes if args.minutes is not None else (1.0 if args.quick else 5.0)
    args.steps = args.steps or (12 if args.quick else 60)
    args.compile = not args.quick
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: no CUDA device is visible; run it on a GPU machine, or pass "
                         "--device cpu --tiny to exercise the script on the CPU")
    with tempfile.TemporaryDirectory() as tmp:
        rows = throughput_rows(args, Path(tmp))
        quality = quality_rows(args, Path(tmp))
    body = report(args, rows, quality)
    print(body)
    if args.device.startswith("cuda") and not args.no_write:
        sys.path.insert(0, str(HERE))
        from results_file import write_section

        write_section(TITLE, body)
    return body


if __name__ == "__main__":
    main()
