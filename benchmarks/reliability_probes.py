"""The probe set of benchmarks/reliability.py, one function per group (issue 14's adversarial pass).

Each group gets the :class:`reliability.Lab` and runs real ``fmmkit`` subprocesses in it; a group
returns notes for the report (what could not be probed on this machine, and why).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from reliability import OK, ONE_LINE, OTHER, TRACEBACK, TRACEBACKS, Lab, error_lines, unprivileged_prefix
from reliability_checks import same_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_spec_errors import CASES as SPEC_CASES  # noqa: E402  (the test suite's malformed specs, replayed)
from test_spec_errors import DATA_FILES, GOOD  # noqa: E402

#: An 8-step run small enough to train in a second: checkpoints at 4 and 8, two EMAs.
TINY = """name = "tiny"
[data]
kind = "checkerboard"
[model]
kind = "mlp"
width = 16
depth = 2
time_dim = 4
zero_init_output = false
[loss]
kind = "lagrangian_self_distillation"
[optim]
lr = 1e-2
schedule = "cosine"
warmup_steps = 2
grad_clip = 1.0
[train]
steps = 8
batch_size = 32
log_every = 1
seed = 3
device = "cpu"
threads = 1
[checkpoint]
every = 4
keep = 5
[ema]
decays = [0.9]
half_lives = [200.0]
[log]
tensorboard = false
[sample]
steps = [1, 2]
num_pictures = 256
picture_solver_steps = 4
[eval]
num_samples = 256
ode = [{kind = "euler", steps = 4}]
"""
#: The run the kill, signal and disk-full probes interrupt: 300 steps, a checkpoint every 5, constant lr
#: (so a run resumed with another train.steps follows the same schedule).
LONG = (TINY.replace('name = "tiny"', 'name = "long"').replace("steps = 8\n", "steps = 300\n")
        .replace("every = 4\nkeep = 5", "every = 5\nkeep = 3").replace('schedule = "cosine"\nwarmup_steps = 2',
                                                                        'schedule = "constant"\nwarmup_steps = 0'))
WEIGHTS = ("model.safetensors", "ema-0.9.safetensors", "ema-hl200.safetensors")


def setup(lab: Lab) -> None:
    """The specs, data files, a trained tiny run and an uninterrupted long run (the references)."""
    if (lab.root / "base" / "run.json").is_file():
        return
    (lab.root / "tiny.toml").write_text(TINY)
    (lab.root / "long.toml").write_text(LONG)
    result = lab.fmmkit("train", "tiny.toml", "--out", "base", "--quiet")
    assert result.code == 0, result.stderr
    start = time.perf_counter()
    result = lab.fmmkit("train", "long.toml", "--out", "long_ref", "--quiet")
    assert result.code == 0, result.stderr
    (lab.root / "long_seconds").write_text(str(time.perf_counter() - start))
    lab.track(lab.root / "base", lab.root / "long_ref")


def copy_run(lab: Lab, name: str, source: str = "base", final: bool = True) -> Path:
    """A copy of a trained run (without its final weights unless ``final``)."""
    out = lab.root / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(lab.root / source, out)
    if not final:
        for w in WEIGHTS:
            (out / w).unlink(missing_ok=True)
        (out / "run.json").unlink(missing_ok=True)
    return out


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:09d}"


# ----------------------------------------------------------------------------------------------
# crafted specs, --set mistakes, bad data


EXTRA_SPECS = {
    "empty_file": "",
    "binary_garbage": "\x00\x01\x02\xff",
    "float_for_int": GOOD + "[train]\nsteps = 1e3\n",
    "cuda_without_gpu": GOOD + '[train]\ndevice = "cuda"\n',
    "unknown_device": GOOD + '[train]\ndevice = "tpu"\n',
    "unknown_ode_solver": GOOD + '[[eval.ode]]\nkind = "rk5"\n',
    "unknown_metric": GOOD + '[eval]\nmetrics = ["fid2"]\n',
    "one_beta": GOOD + "[optim]\nbetas = [0.9]\n",
    "beta_one": GOOD + "[optim]\nbetas = [0.9, 1.0]\n",
    "t_min_above_one": GOOD.replace('kind = "flow_matching"', 'kind = "flow_matching"\n[loss.times]\nt_min = 2.0'),
    "decay_one": GOOD + "[ema]\ndecays = [1.0]\n",
    "keep_zero": GOOD + "[checkpoint]\nkeep = 0\n",
    "batch_zero": GOOD + "[train]\nbatch_size = 0\n",
    "depth_negative": GOOD + '[model]\nkind = "mlp"\ndepth = -1\n',
    "name_not_string": "name = 3\n" + GOOD.replace('name = "ok"\n', ""),
    "teacher_run_number": GOOD.replace('"flow_matching"', '"lagrangian_distillation"') + "[teacher]\nrun = 3\n",
    "teacher_kind_unknown": GOOD.replace('"flow_matching"', '"lagrangian_distillation"') + '[teacher]\nkind = "gaus"\n',
    "huge_integer": GOOD + "[train]\nsteps = 99999999999999999999\n",
    "threads_negative": GOOD + "[train]\nthreads = -1\n",
    "pictures_negative": GOOD + "[log]\npictures_every = -1\n",
    "compile_mode": GOOD + '[compile]\nmode = "fast"\n',
    "precision_fp16": GOOD + '[train]\nprecision = "fp16"\n',
    "unet_on_points": GOOD + '[model]\nkind = "unet"\n',
    "latin1_bytes": "name = \"caf\xe9\"\n" + GOOD.replace('name = "ok"\n', ""),
    "dotted_key": GOOD + '[train]\n"a.b" = 1\n',
    "eval_seed_negative": GOOD + "[eval]\nseed = -5\n",
    "sample_steps_empty_list_of_strings": GOOD + '[sample]\nsteps = ["1"]\n',
    "noise_nan_component": GOOD + "[interpolant]\nnoise = nan\n",
    "ema_half_life_inf": GOOD + "[ema]\nhalf_lives = [inf]\n",
}


def crafted_specs(lab: Lab, **_: Any) -> list[str]:
    """Every malformed spec of the test suite, and more, through ``fmmkit spec check``."""
    setup(lab)
    folder = lab.root / "specs"
    folder.mkdir(exist_ok=True)
    for name, content in DATA_FILES.items():  # the npy cases name these relative to the working directory
        if isinstance(content, bytes):
            (lab.root / name).write_bytes(content)
        else:
            np.save(lab.root / name, content)
    cases = {name: text for name, (text, _) in SPEC_CASES.items()}
    cases.update(EXTRA_SPECS)
    for name, text in cases.items():
        path = folder / f"{name}.toml"
        path.write_bytes(text.encode("latin-1") if name in ("latin1_bytes", "binary_garbage") else text.encode())
        lab.probe(name, "spec", "spec", "check", str(path), expect=2)
    lab.probe("missing_spec_file", "spec", "spec", "check", "nowhere.toml")
    lab.probe("spec_path_is_a_directory", "spec", "spec", "check", str(folder))
    lab.probe("spec_show_bad_file", "spec", "spec", "show", str(folder / "lr_inf.toml"))
    lab.probe("train_bad_spec", "spec", "train", str(folder / "noise_inf.toml"), "--out", "never", expect=2)
    if (lab.root / "never").exists():
        lab.record("train_bad_spec_left_no_directory", "spec", OTHER, "a refused train created its run directory")
    return []


OVERRIDES = ["train.steps", "train.steps=-4", "train.stepz=3", "optim.lr=inf", "optim.lr=nan",
             "train.seed=18446744073709551616", 'loss.kind="flow_matchin"', "optim=3", "optim.lr.x=1",
             "=3", "train..steps=3", 'optim.betas="0.9"', "model.width=1000000000", "train.batch_size=100000000000",
             "train.micro_batches=3", 'ema.sample_with="ema-5"']


def overrides(lab: Lab, **_: Any) -> list[str]:
    """``--set`` mistakes, each reported against the --set that made it."""
    setup(lab)
    for text in OVERRIDES:
        result = lab.probe(f"--set {text}", "override", "spec", "check", "tiny.toml", "--set", text)
        lines = error_lines(result.stderr)
        if lines and "tiny.toml" in lines[0] and "--set" not in lines[0]:
            rec = lab.records[-1]
            rec.outcome, rec.detail = OTHER, f"attributed to the file, not the --set: {lines[0]}"
    return []


def bad_data(lab: Lab, **_: Any) -> list[str]:
    """npy and image-folder data that cannot be used, through spec check and train."""
    setup(lab)
    folder = lab.root / "data"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {
        "nan.npy": np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32),
        "inf.npy": np.array([[0.0, np.inf], [1.0, 2.0]], dtype=np.float32),
        "one_d.npy": np.zeros(10, dtype=np.float32),
        "no_rows.npy": np.zeros((0, 2), dtype=np.float32),
        "no_features.npy": np.zeros((10, 0), dtype=np.float32),
        "scale_1e30.npy": rng.normal(size=(50, 2)).astype(np.float32) * 1e30,
        "strings.npy": np.array([["a", "b"], ["c", "d"]]),
        "objects.npy": None,
        "good.npy": rng.normal(size=(50, 2)).astype(np.float32),
        "labels_short.npy": np.zeros(3, dtype=np.int64),
        "labels_negative.npy": -np.ones(50, dtype=np.int64),
        "labels_float.npy": np.zeros(50, dtype=np.float32),
    }
    for name, array in arrays.items():
        if array is None:
            np.save(folder / name, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        else:
            np.save(folder / name, array)
    (folder / "truncated.npy").write_bytes((folder / "good.npy").read_bytes()[:60])
    base = TINY.replace('kind = "checkerboard"', 'kind = "npy"\npath = "PATH"')
    cases = {name.removesuffix(".npy"): base.replace("PATH", f"data/{name}") for name in arrays if name != "good.npy"
             and not name.startswith("labels")}
    cases["truncated"] = base.replace("PATH", "data/truncated.npy")
    cases["missing_file"] = base.replace("PATH", "data/absent.npy")
    cases["path_is_a_directory"] = base.replace("PATH", "data")
    for labels in ("labels_short", "labels_negative", "labels_float"):
        cases[labels] = base.replace("PATH", "data/good.npy").replace(
            'path = "data/good.npy"', f'path = "data/good.npy"\nlabels_path = "data/{labels}.npy"')
    images = folder / "images" / "cls"
    images.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    for i in range(3):
        Image.fromarray(rng.integers(0, 255, size=(10, 10, 3), dtype=np.uint8)).save(images / f"ok{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "empty_images").mkdir(exist_ok=True)
    image_spec = TINY.replace('kind = "checkerboard"', 'kind = "image_folder"\nroot = "ROOT"\nsize = 4\nchannels = 1')
    cases["image_corrupt_file"] = image_spec.replace("ROOT", "data/images")
    cases["image_root_missing"] = image_spec.replace("ROOT", "data/no_images")
    cases["image_root_empty"] = image_spec.replace("ROOT", "data/empty_images")
    cases["mnist_root_missing"] = TINY.replace('kind = "checkerboard"', 'kind = "mnist"\nroot = "data/no_mnist"')
    cases["cifar_root_missing"] = TINY.replace('kind = "checkerboard"', 'kind = "cifar10"\nroot = "data/no_cifar"')
    for name, text in cases.items():
        path = folder / f"{name}.toml"
        path.write_text(text)
        if name != "image_corrupt_file":  # its pixels are read on first use: spec check may pass it
            lab.probe(f"spec check: {name}", "data", "spec", "check", str(path), expect=2)
        out = lab.root / f"data_run_{name}"
        lab.probe(f"train: {name}", "data", "train", str(path), "--out", str(out), "--quiet", expect=2)
        if out.exists():
            lab.record(f"train: {name}: no run directory", "data", OTHER, "a refused train created its directory")
    return []


# ----------------------------------------------------------------------------------------------
# bad command lines


def bad_cli(lab: Lab, **_: Any) -> list[str]:
    """Command lines a user could type by mistake."""
    setup(lab)
    (lab.root / "a_dir.npy").mkdir(exist_ok=True)
    edited = copy_run(lab, "edited_width")
    text = (edited / "spec.toml").read_text()
    (edited / "spec.toml").write_text(text.replace("width = 16\n", "width = 24\n"))
    probes: list[tuple[str, list[str], Any]] = [
        ("sample --num 0", ["sample", "base", "--num", "0", "--out", "x.npy"], 2),
        ("sample --num -5", ["sample", "base", "--num", "-5", "--out", "x.npy"], 2),
        ("sample --num 1e11", ["sample", "base", "--num", "100000000000", "--out", "x.npy"], 2),
        ("sample --steps 0", ["sample", "base", "--steps", "0", "--out", "x.npy"], 2),
        ("sample --steps -1", ["sample", "base", "--steps", "-1", "--out", "x.npy"], 2),
        ("sample --steps 1e11", ["sample", "base", "--steps", "100000000000", "--out", "x.npy"], 2),
        ("sample --steps 1e11 --solver rk4", ["sample", "base", "--steps", "100000000000", "--solver", "rk4",
                                              "--out", "x.npy"], 2),
        ("sample --steps x", ["sample", "base", "--steps", "x", "--out", "x.npy"], 2),
        ("sample --seed -1", ["sample", "base", "--seed", "-1", "--out", "x.npy"], 2),
        ("sample --max-memory 0", ["sample", "base", "--max-memory", "0", "--out", "x.npy"], 2),
        ("sample --out a directory", ["sample", "base", "--out", "a_dir.npy"], 2),
        ("sample --out .txt", ["sample", "base", "--out", "x.txt"], 2),
        ("sample --solver unknown", ["sample", "base", "--solver", "rk5", "--out", "x.npy"], 2),
        ("sample a missing run", ["sample", "nowhere", "--out", "x.npy"], 2),
        ("sample a non-run directory", ["sample", "specs", "--out", "x.npy"], 2),
        ("sample weights that do not fit spec.toml", ["sample", "edited_width", "--out", "x.npy"], 2),
        ("eval weights that do not fit spec.toml", ["eval", "edited_width", "--num", "50"], 2),
        ("verify weights that do not fit spec.toml", ["verify", "edited_width", "--num", "32"], 2),
        ("eval --num 0", ["eval", "base", "--num", "0"], 2),
        ("eval --num -3", ["eval", "base", "--num", "-3"], 2),
        ("eval --num 1", ["eval", "base", "--num", "1"], 2),
        ("eval --num 1e11", ["eval", "base", "--num", "100000000000"], 2),
        ("eval a missing run", ["eval", "nowhere"], 2),
        ("verify --search-examples 2", ["verify", "base", "--search-examples", "2"], 2),
        ("verify --search-examples 0", ["verify", "base", "--search-examples", "0"], 2),
        ("verify --search-examples 1e11", ["verify", "base", "--search-examples", "100000000000"], 2),
        ("verify --num 1", ["verify", "base", "--num", "1"], 2),
        ("verify --num 1e11", ["verify", "base", "--num", "100000000000"], 2),
        ("verify --threshold bad", ["verify", "base", "--threshold", "semigroup"], 2),
        ("verify --threshold unknown law", ["verify", "base", "--threshold", "semigrop=0.1"], 2),
        ("verify --threshold negative", ["verify", "base", "--threshold", "semigroup=-1"], 2),
        ("verify --order sideways", ["verify", "base", "--order", "sideways"], 2),
        ("train without a spec", ["train"], 2),
        ("train --resume with a spec", ["train", "tiny.toml", "--resume", "base"], 2),
        ("train --resume a missing run", ["train", "--resume", "nowhere"], 2),
        ("train --resume a non-run", ["train", "--resume", "specs"], 2),
        ("train --out an existing run", ["train", "tiny.toml", "--out", "base"], 2),
        ("unknown command", ["trian"], 2),
        ("spec with a bad action", ["spec", "chek", "tiny.toml"], 2),
    ]
    for name, args, expect in probes:
        watch = lab.root / "base" if "base" in args else None
        lab.probe(name, "cli", *args, expect=expect, watch=watch, timeout=300)
    return []


# ----------------------------------------------------------------------------------------------
# damaged and forged checkpoints


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


def _forge(checkpoint: Path, name: str, data: bytes | None = None, entry: dict | None = None) -> None:
    if data is not None:
        (checkpoint / name).write_bytes(data)
    manifest = json.loads((checkpoint / "checkpoint.json").read_text())
    manifest["files"][name] = entry or {"bytes": len(data or b""), "sha256": hashlib.sha256(data or b"").hexdigest()}
    (checkpoint / "checkpoint.json").write_text(json.dumps(manifest))


def damaged_checkpoints(lab: Lab, **_: Any) -> list[str]:
    """Damage or forge the newest checkpoint, resume: the previous one must be used and the result exact."""
    setup(lab)
    marker = lab.root / "pwned"

    def truncate(c: Path) -> None:
        data = (c / "trainer.safetensors").read_bytes()
        (c / "trainer.safetensors").write_bytes(data[: len(data) // 2])

    def flip(c: Path) -> None:
        data = bytearray((c / "model.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (c / "model.safetensors").write_bytes(bytes(data))

    def symlink_dev_zero(c: Path) -> None:
        (c / "model.safetensors").unlink()
        os.symlink("/dev/zero", c / "model.safetensors")
        _forge(c, "model.safetensors", entry={"bytes": 2**40, "sha256": "0" * 64})

    def torch_pickle(c: Path) -> None:
        import torch

        torch.save({"x": _Payload(str(marker))}, lab.root / "evil.pt")
        _forge(c, "model.safetensors", (lab.root / "evil.pt").read_bytes())

    def other_model(c: Path) -> None:
        other = lab.root / "wide"
        if not other.exists():
            lab.fmmkit("train", "tiny.toml", "--out", "wide", "--quiet", "--set", "model.width=24")
        _forge(c, "model.safetensors", (step_dir(other, 8) / "model.safetensors").read_bytes())

    def manifest_field(key: str, value: Any) -> Any:
        def damage(c: Path) -> None:
            manifest = json.loads((c / "checkpoint.json").read_text())
            manifest[key] = value
            (c / "checkpoint.json").write_text(json.dumps(manifest))
        return damage

    damages = {
        "truncated part": truncate,
        "flipped byte": flip,
        "no manifest": lambda c: (c / "checkpoint.json").unlink(),
        "manifest not JSON": lambda c: (c / "checkpoint.json").write_text("{not json"),
        "manifest names /etc/passwd": lambda c: _forge(c, "/etc/passwd", Path("/etc/passwd").read_bytes()),
        "manifest names ../../spec.toml": lambda c: _forge(c, "../../spec.toml", (c.parents[1] / "spec.toml").read_bytes()),
        "part is a symlink to /dev/zero": symlink_dev_zero,
        "manifest size 2**62": lambda c: _forge(c, "trainer.safetensors", entry={"bytes": 2**62, "sha256": "0" * 64}),
        "pickle with fixed checksum": lambda c: _forge(c, "trainer.safetensors",
                                                       pickle.dumps({"optimizer": _Payload(str(marker))})),
        "torch.save zip pickle": torch_pickle,
        "weights of another model": other_model,
        "manifest format 2": manifest_field("format", 2),
        "manifest step is a string": manifest_field("step", "eight"),
        "manifest micro_batches 3": manifest_field("micro_batches", 3),
        "part missing": lambda c: (c / "rng.rank0.safetensors").unlink(),
        "part listed missing from manifest": lambda c: _forge(c, "extra.safetensors", b"\0" * 16),
        "manifest is a directory": lambda c: ((c / "checkpoint.json").unlink(), (c / "checkpoint.json").mkdir()),
        "checkpoint folder is a file": lambda c: (shutil.rmtree(c), c.write_bytes(b"x")),
    }
    for name, damage in damages.items():
        run = copy_run(lab, f"damaged_{len(lab.records)}", final=False)
        damage(step_dir(run, 8))
        result = lab.fmmkit("train", "--resume", str(run), "--quiet")
        rec = lab.judge(name, "checkpoint", result, "ok")
        if marker.exists():
            rec.outcome, rec.detail = OTHER, "loading the checkpoint ran code"
            marker.unlink()
        if rec.outcome == OK:
            rec.identical = same_weights(run, lab.root / "base")
            if "trying the previous checkpoint" not in result.stderr:
                rec.outcome, rec.detail = OTHER, "no warning about the damaged checkpoint"
        lab.track(run)
    # every checkpoint damaged; staging left behind; nothing in checkpoints/
    run = copy_run(lab, "all_damaged", final=False)
    for step in (4, 8):
        (step_dir(run, step) / "checkpoint.json").write_text("{")
    lab.probe("every checkpoint damaged", "checkpoint", "train", "--resume", str(run), "--quiet", expect=2)
    run = copy_run(lab, "staging_left", final=False)
    shutil.copytree(step_dir(run, 8), run / "checkpoints" / ".step-000000012.tmp")
    result = lab.fmmkit("train", "--resume", str(run), "--quiet")
    rec = lab.judge("half-written staging left behind", "checkpoint", result, "ok")
    rec.identical = same_weights(run, lab.root / "base") if rec.outcome == OK else None
    lab.track(run)
    run = copy_run(lab, "no_checkpoints", final=False)
    shutil.rmtree(run / "checkpoints")
    lab.probe("no checkpoint at all", "checkpoint", "train", "--resume", str(run), "--quiet", expect=2)
    # keep = 1 with a damaged newest checkpoint: the fresh one must replace it
    run = copy_run(lab, "keep_one", final=False)
    flip(step_dir(run, 8))
    result = lab.fmmkit("train", "--resume", str(run), "--quiet", "--set", "checkpoint.keep=1")
    rec = lab.judge("keep = 1 after a damaged newest checkpoint", "checkpoint", result, "ok")
    if rec.outcome == OK:
        again = lab.fmmkit("train", "--resume", str(run), "--quiet")
        rec.identical = same_weights(run, lab.root / "base")
        if again.code != 0:
            rec.outcome, rec.detail = OTHER, f"cannot be resumed afterwards: {error_lines(again.stderr)[-1:]}"
    lab.track(run)
    return []


# ----------------------------------------------------------------------------------------------
# kill -9, SIGTERM, SIGINT


def _wait_for(predicate: Any, proc: subprocess.Popen, timeout: float = 300, every: float = 0.0005) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def _finish_interrupted(lab: Lab, run: Path, name: str, group: str, how: str) -> None:
    """Continue an interrupted long run until it is done, then compare it with the uninterrupted one."""
    result = lab.fmmkit("train", "--resume", str(run), "--quiet")
    lines = error_lines(result.stderr)
    if result.code == 2 and lines and ("before its first checkpoint" in lines[-1] or "no run to resume" in lines[-1]
                                        or "not a run directory" in lines[-1]):
        result = lab.fmmkit("train", "long.toml", "--out", str(run), "--quiet", "--overwrite")
    rec = lab.judge(f"{name}: resume", group, result, "ok")
    rec.detail = f"{how}; {rec.detail}"
    if rec.outcome == OK:
        rec.identical = same_weights(run, lab.root / "long_ref")
        if not rec.identical:
            rec.outcome, rec.detail = OTHER, f"{how}; the resumed run differs from the uninterrupted one"
    lab.track(run)


def kills(lab: Lab, kills: int = 12, **_: Any) -> list[str]:
    """kill -9 at random moments and inside checkpoint writes; SIGTERM and SIGINT at random steps."""
    setup(lab)
    rng = random.Random(14)
    total = float((lab.root / "long_seconds").read_text())
    for i in range(kills):
        run = lab.root / f"kill9_{i}"
        shutil.rmtree(run, ignore_errors=True)
        delay = rng.uniform(0.5, total)
        proc = lab.popen("train", "long.toml", "--out", str(run), "--quiet")
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        done = len(list((run / "checkpoints").glob("step-*"))) if run.exists() else 0
        _finish_interrupted(lab, run, f"kill -9 at {delay:.2f} s", "kill -9", f"exit {proc.returncode}, "
                            f"{done} checkpoints on disk")
    hits = 0
    for i in range(max(2, kills // 3)):
        run = lab.root / f"kill9_write_{i}"
        shutil.rmtree(run, ignore_errors=True)
        proc = lab.popen("train", "long.toml", "--out", str(run), "--quiet")
        target = 5 * (i + 2)  # inside the write of checkpoint step 10, 15, ...
        staging = run / "checkpoints" / f".step-{target:09d}.tmp"
        if _wait_for(staging.exists, proc):
            proc.kill()
        proc.communicate()
        inside = staging.exists()
        hits += inside
        _finish_interrupted(lab, run, f"kill -9 inside checkpoint {target}", "kill -9",
                            "killed inside the write" if inside else "the write finished before the kill")
    for signame, count in (("SIGTERM", 4), ("SIGINT", 3)):
        for i in range(count):
            run = lab.root / f"{signame.lower()}_{i}"
            shutil.rmtree(run, ignore_errors=True)
            proc = lab.popen("train", "long.toml", "--out", str(run), "--quiet")
            # SIGINT before training starts would interrupt Python's own start-up (a KeyboardInterrupt
            # before fmmkit runs); send it once the run directory exists.
            step = rng.randint(3, 200)
            _wait_for(lambda: (run / "metrics.jsonl").is_file()
                      and len((run / "metrics.jsonl").read_text().splitlines()) >= step, proc, every=0.01)
            proc.send_signal(getattr(signal, signame))
            out, err = proc.communicate()
            expected = {"SIGTERM": 143, "SIGINT": 130}[signame]
            result_ok = proc.returncode in (expected, 0) and TRACEBACK not in err
            name = f"{signame} at step ~{step}"
            if TRACEBACK in err:
                lab.record(name, "signals", TRACEBACKS, err.strip().splitlines()[-1])
            else:
                lab.record(name, "signals", OK if result_ok else OTHER, f"exit {proc.returncode}")
            _finish_interrupted(lab, run, name, "signals", f"exit {proc.returncode}")
    return [f"kill -9 inside a checkpoint write: {hits} of {max(2, kills // 3)} kills landed inside the write "
            "(the staging folder was on disk when the process died)."]


# ----------------------------------------------------------------------------------------------
# concurrent writers and readers


def concurrency(lab: Lab, **_: Any) -> list[str]:
    """Two writers on one run; readers while a writer runs; two fresh trains into one directory."""
    setup(lab)
    for trial in range(2):
        run = copy_run(lab, f"concurrent_resume_{trial}", source="long_ref")
        procs = [lab.popen("train", "--resume", str(run), "--quiet", "--set", f"train.steps={steps}")
                 for steps in (800, 801)]
        results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
        for k, (code, _out, err) in enumerate(results):
            res = _as_result(code, err)
            lab.judge(f"concurrent resume {trial}.{k}", "concurrency", res, "ok" if code == 0 else 1)
        if sorted(code for code, _, _ in results) not in ([0, 1], [0, 0]):  # [0, 0]: the first was done first
            lab.record(f"concurrent resume {trial}: one writer", "concurrency", OTHER,
                       f"exit statuses {[c for c, _, _ in results]}, expected one 0 and one 1")
        lab.track(run)
    # a writer that runs for a while; a second writer, an overwrite, and readers meanwhile
    run = copy_run(lab, "live", source="long_ref")
    writer = lab.popen("train", "--resume", str(run), "--quiet", "--set", "train.steps=100000")
    _wait_for(lambda: any(s > 300 for s in _steps(run)), writer)
    lab.probe("second writer on a live run", "concurrency", "train", "--resume", str(run), "--quiet", expect=1)
    lab.probe("--overwrite of a live run", "concurrency", "train", "long.toml", "--out", str(run), "--overwrite",
              "--quiet", expect=1)
    lab.probe("sample while a writer runs", "concurrency", "sample", str(run), "--num", "20", "--out", "live.npy",
              expect="ok")
    lab.probe("eval while a writer runs", "concurrency", "eval", str(run), "--num", "50", expect="ok")
    result = lab.probe("verify while a writer runs", "concurrency", "verify", str(run), "--num", "32",
                       "--search-examples", "8", expect="ok")
    if result.code == 1 and "verdict: FAILED" in result.stdout and not error_lines(result.stderr):
        # verify ran and exits 1 by design when a law fails (a 300-step run of a tiny MLP fails them)
        lab.records[-1].outcome, lab.records[-1].detail = OK, "ran; exit 1: the tiny run fails the laws (by design)"
    writer.kill()
    writer.communicate()
    step = max(_steps(run))
    lab.probe("resume after the writer was killed (no stale lock)", "concurrency", "train", "--resume", str(run),
              "--quiet", "--set", f"train.steps={step + 3}", expect="ok")
    lab.track(run)
    # two fresh trains into one new directory
    procs = [lab.popen("train", "tiny.toml", "--out", "twin", "--quiet") for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    for k, (code, _out, err) in enumerate(results):
        lab.judge(f"two trains into one new --out: {k}", "concurrency", _as_result(code, err),
                  "ok" if code == 0 else "error")
    if sorted(code for code, _, _ in results)[0] != 0:
        lab.record("two trains into one new --out: one trained", "concurrency", OTHER, "neither trained")
    lab.track(lab.root / "twin")
    return []


def _as_result(code: int, err: str) -> Any:
    from reliability import Result

    return Result([], code, "", err, 0.0)


def _steps(run: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*")] or [0]


# ----------------------------------------------------------------------------------------------
# permissions


def permissions(lab: Lab, **_: Any) -> list[str]:
    """Read-only places, as an ordinary user (root: without the capabilities that bypass permission bits)."""
    setup(lab)
    prefix = unprivileged_prefix()
    if prefix is None:
        return ["Permissions not probed: running as root and no setpriv to drop CAP_DAC_OVERRIDE."]
    how = "as root under setpriv without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH" if prefix else "as an ordinary user"
    locked = lab.root / "locked"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o555)
    lab.probe("train --out in a read-only folder", "permissions", "train", "tiny.toml", "--out", str(locked / "run"),
              "--quiet", prefix=prefix, expect=1)
    run = copy_run(lab, "ro_checkpoints", final=False)
    shutil.rmtree(step_dir(run, 8))  # the resume must write a checkpoint (the final one) into checkpoints/
    (run / "checkpoints").chmod(0o555)
    lab.probe("resume with a read-only checkpoints/", "permissions", "train", "--resume", str(run), "--quiet",
              prefix=prefix, expect=1)
    (run / "checkpoints").chmod(0o755)
    ok = lab.fmmkit("train", "--resume", str(run), "--quiet")
    rec = lab.judge("resume once checkpoints/ is writable again", "permissions", ok, "ok")
    rec.identical = same_weights(run, lab.root / "base") if rec.outcome == OK else None
    lab.track(run)
    run = copy_run(lab, "ro_run", final=False)
    run.chmod(0o555)
    lab.probe("resume a read-only run directory", "permissions", "train", "--resume", str(run), "--quiet",
              prefix=prefix, expect=1, watch=run)
    run.chmod(0o755)
    readonly = copy_run(lab, "ro_finished")
    readonly.chmod(0o555)
    for name, args in (("eval a read-only run", ["eval", str(readonly), "--num", "50"]),
                       ("verify a read-only run", ["verify", str(readonly), "--num", "32", "--search-examples", "8"])):
        result = lab.probe(name, "permissions", *args, prefix=prefix, expect=1)
        if lab.records[-1].outcome == ONE_LINE and not result.stdout.strip():
            lab.records[-1].outcome, lab.records[-1].detail = OTHER, "the results were not shown before the error"
    lab.probe("sample --out into a read-only folder", "permissions", "sample", str(readonly), "--out",
              str(locked / "x.npy"), prefix=prefix, expect=1)
    readonly.chmod(0o755)
    secret = lab.root / "secret.toml"
    secret.write_text(TINY)
    secret.chmod(0)
    lab.probe("spec check of an unreadable spec", "permissions", "spec", "check", str(secret), prefix=prefix, expect=1)
    data = lab.root / "secret.npy"
    np.save(data, np.zeros((10, 2), dtype=np.float32))
    data.chmod(0)
    spec = lab.root / "secret_data.toml"
    spec.write_text(TINY.replace('kind = "checkerboard"', f'kind = "npy"\npath = "{data}"'))
    lab.probe("spec check with unreadable data", "permissions", "spec", "check", str(spec), prefix=prefix, expect=1)
    locked.chmod(0o755)
    return [f"Permissions probed {how}."]


# ----------------------------------------------------------------------------------------------
# a full disk


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def _fill(where: Path, leave: int) -> Path:
    stat = os.statvfs(where)
    free = stat.f_bavail * stat.f_frsize
    filler = where / "filler"
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave))
        except OSError:
            pass
    return filler


def disk_full(lab: Lab, **_: Any) -> list[str]:
    """A small tmpfs that fills up during training, at the start, and under eval and sample."""
    setup(lab)
    disk = lab.root / "disk"
    if os.geteuid() != 0 or not _mount_tmpfs(disk, "16m"):
        return ["Disk full not probed: mounting a tmpfs is not permitted here."]
    notes = []
    try:
        for i, leave in enumerate((16 * 1024, 64 * 1024, 2 * 1024 * 1024)):
            run = disk / f"run{i}"
            proc = lab.popen("train", str(lab.root / "long.toml"), "--out", str(run), "--quiet")
            _wait_for(lambda: len(_steps(run)) >= 1 and max(_steps(run)) >= 10, proc)
            filler = _fill(disk, leave)
            out, err = proc.communicate()
            res = _as_result(proc.returncode, err)
            rec = lab.judge(f"disk fills during training ({leave // 1024} KiB left)", "disk full", res,
                            1 if proc.returncode else "ok")
            rec.detail = rec.detail or f"exit {proc.returncode}"
            filler.unlink()
            _finish_interrupted(lab, run, f"disk full, {leave // 1024} KiB left", "disk full", "space freed")
            shutil.rmtree(run)
        filler = _fill(disk, 0)
        lab.probe("train on a full disk", "disk full", "train", str(lab.root / "tiny.toml"), "--out",
                  str(disk / "full_run"), "--quiet", expect=1)
        filler.unlink()
        shutil.copytree(lab.root / "base", disk / "base")
        filler = _fill(disk, 0)
        result = lab.probe("eval on a full disk", "disk full", "eval", str(disk / "base"), "--num", "50", expect=1)
        if lab.records[-1].outcome == ONE_LINE and "flow map" not in result.stdout:
            lab.records[-1].outcome = OTHER
        lab.probe("sample to a full disk", "disk full", "sample", str(disk / "base"), "--num", "100000",
                  "--out", str(disk / "x.npy"), expect=1)
        filler.unlink()
        notes.append("Disk full probed on a 16 MiB tmpfs.")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    return notes


# ----------------------------------------------------------------------------------------------
# pipes, resume guards, plugins


def pipes(lab: Lab, **_: Any) -> list[str]:
    """Output into a pipe whose reader has gone."""
    setup(lab)
    for command in ("FMMKIT plugins | true", "FMMKIT plugins --json | true", "FMMKIT spec show tiny.toml | true",
                    "FMMKIT plugins | head -c 10"):
        result = lab.shell(f"({command.split(' | ')[0]}; echo $? >&2) | {command.split(' | ')[1]}")
        status = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        rest = [line for line in result.stderr.strip().splitlines()[:-1] if not line.startswith("fmmkit: warning:")]
        if TRACEBACK in result.stderr:
            lab.record(command, "pipes", TRACEBACKS, rest[-1] if rest else "")
        elif rest or status not in ("0", "141"):
            lab.record(command, "pipes", OTHER, f"exit {status}: {' | '.join(rest)[:200]}")
        else:
            lab.record(command, "pipes", OK, f"exit {status}, nothing on stderr")
    return []


def resume_guards(lab: Lab, **_: Any) -> list[str]:
    """Hand-edited specs, shortened runs, a run that would be its own teacher, a repaired non-finite stop."""
    setup(lab)
    for old, new in (("batch_size = 32\n", "batch_size = 64\n"), ("seed = 3\n", "seed = 4\n"),
                     ("diagonal_fraction = 0.75\n", "diagonal_fraction = 0.5\n")):
        run = copy_run(lab, f"hand_edited_{len(lab.records)}")
        (run / "spec.toml").write_text((run / "spec.toml").read_text().replace(old, new))
        lab.probe(f"resume a hand-edited spec.toml ({new.strip()})", "resume", "train", "--resume", str(run),
                  "--quiet", "--set", "train.steps=10", expect=2, watch=run)
    run = copy_run(lab, "shorter")
    lab.probe("--resume --set train.steps below the checkpoint", "resume", "train", "--resume", str(run), "--quiet",
              "--set", "train.steps=6", expect=2, watch=run)
    lab.probe("--resume --set train.steps equal to the checkpoint", "resume", "train", "--resume", str(run), "--quiet",
              "--set", "train.steps=8", expect="ok")
    lab.probe("--resume --set model.width", "resume", "train", "--resume", str(run), "--quiet", "--set",
              "model.width=24", expect=2, watch=run)
    lab.track(run)
    run = copy_run(lab, "repaired")
    lab.probe("--resume --set optim.lr / grad_clip / on_nonfinite", "resume", "train", "--resume", str(run), "--quiet",
              "--set", "train.steps=10", "--set", "optim.lr=0.001", "--set", "optim.grad_clip=0.5", "--set",
              'train.on_nonfinite="skip"', expect="ok")
    lab.track(run)
    lab.probe("lr = 1e30 stops with a message", "resume", "train", "tiny.toml", "--out", str(lab.root / "diverged"),
              "--quiet", "--set", "optim.lr=1e30", expect=2)
    lab.track(lab.root / "diverged")
    # a run as its own teacher
    teacher = lab.root / "nest" / "teacher"
    lab.fmmkit("train", "tiny.toml", "--out", str(teacher), "--quiet", "--set", 'loss.kind="flow_matching"')
    student = lab.root / "student.toml"
    student.write_text(TINY.replace('kind = "lagrangian_self_distillation"', 'kind = "lagrangian_distillation"')
                       + f'[teacher]\nrun = "{teacher}"\n')
    lab.probe("teacher.run equal to --out (--overwrite)", "resume", "train", str(student), "--out", str(teacher),
              "--overwrite", "--quiet", expect=2, watch=teacher)
    lab.probe("teacher.run inside --out (--overwrite)", "resume", "train", str(student), "--out",
              str(teacher.parent), "--overwrite", "--quiet", expect=2, watch=teacher)
    lab.track(teacher)
    return []


def plugins(lab: Lab, **_: Any) -> list[str]:
    """FMMKIT_BLOCK_PLUGINS with a misspelt name, and a spec using a blocked component."""
    setup(lab)
    result = lab.fmmkit("plugins", env={"FMMKIT_BLOCK_PLUGINS": "fmmkit-exampel"})
    rec = lab.judge("FMMKIT_BLOCK_PLUGINS with a misspelt name", "plugins", result, "ok")
    if rec.outcome == OK and "FMMKIT_BLOCK_PLUGINS" not in result.stderr:
        rec.outcome, rec.detail = OTHER, "the unknown name was silently ignored"
    lab.probe("a spec whose component is blocked", "plugins", "spec", "check", "tiny.toml",
              env={"FMMKIT_BLOCK_PLUGINS": "fmmkit.losses.lagrangian_self_distillation"}, expect=2)
    return []


ALL_GROUPS = {
    "spec": crafted_specs,
    "override": overrides,
    "data": bad_data,
    "cli": bad_cli,
    "checkpoint": damaged_checkpoints,
    "kill": kills,
    "concurrency": concurrency,
    "permissions": permissions,
    "disk": disk_full,
    "pipes": pipes,
    "resume": resume_guards,
    "plugins": plugins,
}
