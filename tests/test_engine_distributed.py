"""torchrun with 2 gloo processes on the CPU: DDP and FSDP2 match one process; sharded checkpoints resume exactly."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine_helpers import assert_same_weights, records, tiny_spec
from fmmkit.spec.toml_writer import dumps
from fmmkit.training.checkpoint import list_checkpoints
from fmmkit.training.loop import resume_run, train

pytestmark = pytest.mark.slow

WEIGHT_FILES = ("model.safetensors", "ema-0.9.safetensors", "ema-hl200.safetensors")
TOLERANCE = 1e-6  # float32; the reductions may add in another order

SCRIPT = '''
import shutil, sys
from pathlib import Path
import torch.distributed as dist
from fmmkit.cli import main

dist.init_process_group("gloo")
root, spec = Path(sys.argv[1]), sys.argv[2]
assert main(["train", spec, "--out", str(root / "ddp"), "--quiet"]) == 0
assert main(["train", spec, "--out", str(root / "fsdp"), "--quiet", "--set", 'train.parallel="fsdp"']) == 0
if dist.get_rank() == 0:
    shutil.copytree(root / "fsdp", root / "fsdp_resumed")
    for path in (root / "fsdp_resumed" / "checkpoints").iterdir():
        if path.name > "step-000000004":
            shutil.rmtree(path)
    for path in (root / "fsdp_resumed").glob("*.safetensors"):
        path.unlink()
dist.barrier()
assert main(["train", "--resume", str(root / "fsdp_resumed"), "--quiet"]) == 0
dist.destroy_process_group()
'''


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DDP, FSDP and resumed-FSDP runs of one torchrun job, and a one-process reference."""
    root = tmp_path_factory.mktemp("torchrun")
    # a derivative-based loss (LSD takes a JVP through the model) with EMAs, clipping and warm-up
    spec = tiny_spec(train={"micro_batches": 2}, sample={"num_pictures": 64})
    (root / "spec.toml").write_text(dumps(spec))
    (root / "job.py").write_text(SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(root / "job.py"), str(root),
                             str(root / "spec.toml")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    train(spec, out=root / "single", progress=False, pictures=False)
    return root


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_process(runs: Path, parallel: str) -> None:
    for name in WEIGHT_FILES:
        assert_same_weights(runs / parallel / name, runs / "single" / name, atol=TOLERANCE)
    steps = [r["step"] for r in records(runs / parallel) if "loss" in r]
    assert steps == list(range(1, 9)), "only rank 0 logs, once per step"


def test_checkpoints_hold_every_process_state(runs: Path) -> None:
    ddp = list_checkpoints(runs / "ddp")[-1][1]
    assert {"model.safetensors", "trainer.safetensors", "rng.rank0.safetensors", "rng.rank1.safetensors"} <= {
        p.name for p in ddp.iterdir()}
    fsdp = list_checkpoints(runs / "fsdp")[-1][1]
    shards = sorted(p.name for p in fsdp.glob("model.rank*.safetensors"))
    assert shards == ["model.rank0.safetensors", "model.rank1.safetensors"]
    full = (ddp / "model.safetensors").stat().st_size
    assert all((fsdp / s).stat().st_size < 0.75 * full for s in shards), "FSDP shards should hold about half each"


def test_sharded_checkpoint_resumes_bit_identically(runs: Path) -> None:
    for name in WEIGHT_FILES:
        assert_same_weights(runs / "fsdp_resumed" / name, runs / "fsdp" / name)


def test_a_two_process_ddp_checkpoint_resumes_on_one_process(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(runs / "ddp", out)
    for step, path in list_checkpoints(out):
        if step > 4:
            shutil.rmtree(path)
    for name in WEIGHT_FILES:
        (out / name).unlink()
    resume_run(out, progress=False, pictures=False)  # micro-batch 1's stream comes from rank 1's file
    for name in WEIGHT_FILES:
        assert_same_weights(out / name, runs / "ddp" / name, atol=TOLERANCE)
