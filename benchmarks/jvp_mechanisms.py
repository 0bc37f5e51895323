"""How to take the JVP of a derivative loss: torch.func.jvp, dual numbers, fmmkit's jvp, double backward.

One JVP of X_{s,t}(x) in t (LSD's d/dt X, tangent (dx, ds, dt) = (0, 0, 1)) of fmmkit's ``mlp`` flow
map, then a backward pass of |X|^2 + |dX|^2 into the parameters (the gradient goes through primal and
tangent, as in LSD / LMD), timed for each way of computing the JVP on the same inputs:

- ``torch.func.jvp``: functorch's transform (fmmkit before issue 13);
- ``forward_ad``: ``torch.autograd.forward_ad`` dual numbers, no other change;
- ``fmmkit jvp``: :func:`fmmkit.core.jvp.jvp`, dual numbers with one product per frozen-weight layer;
- ``double backward``: J v as the derivative of the VJP u -> J^T u along v (two reverse passes with
  create_graph, then the loss's backward through both).

Also the GEMM calls of one step (torch.profiler), the arithmetic each mechanism really does.
Process CPU time (one thread: steadier than wall time on a shared machine), medians of interleaved
rounds; each mechanism's gradient is checked against torch.func.jvp's.

    nice -n 5 .venv/bin/python benchmarks/jvp_mechanisms.py --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from fmmkit.core import FlowMap
from fmmkit.core.jvp import jvp as fmmkit_jvp
from fmmkit.nets.mlp import MLP, MLPConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import machine  # noqa: E402

Mechanism = Callable[[FlowMap, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def func_jvp(model: FlowMap, x: Tensor, s: Tensor, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    return torch.func.jvp(model, (x, s, t), (torch.zeros_like(x), torch.zeros_like(s), dt))


def forward_ad(model: FlowMap, x: Tensor, s: Tensor, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    with fwAD.dual_level():
        out = model(x, s, fwAD.make_dual(t, dt))
        primal, tangent = fwAD.unpack_dual(out)
    return primal, tangent


def fmmkit(model: FlowMap, x: Tensor, s: Tensor, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    return fmmkit_jvp(model, (x, s, t), (torch.zeros_like(x), torch.zeros_like(s), dt))


def double_backward(model: FlowMap, x: Tensor, s: Tensor, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    t = t.detach().requires_grad_(True)
    out = model(x, s, t)
    u = torch.zeros_like(out, requires_grad=True)
    (vjp,) = torch.autograd.grad(out, t, u, create_graph=True)  # J^T u, linear in u
    (tangent,) = torch.autograd.grad(vjp, u, dt, create_graph=True)  # d/du (J^T u . dt) = J dt
    return out, tangent


MECHANISMS: dict[str, Mechanism] = {"torch.func.jvp": func_jvp, "forward_ad": forward_ad, "fmmkit jvp": fmmkit,
                                    "double backward": double_backward}


def step(mechanism: Mechanism, model: FlowMap, x: Tensor, s: Tensor, t: Tensor, dt: Tensor) -> Tensor:
    model.zero_grad(set_to_none=True)
    primal, tangent = mechanism(model, x, s, t, dt)
    loss = primal.square().mean() + tangent.square().mean()
    loss.backward()
    return loss.detach()


def gemm_calls(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name in ("aten::mm", "aten::addmm", "aten::bmm"))


def measure(width: int, batch: int, rounds: int) -> dict[str, tuple[float, int, float]]:
    torch.manual_seed(0)
    model = FlowMap(MLP(MLPConfig(width=width, depth=4, zero_init_output=False), (2,)))
    x = torch.randn(batch, 2)
    s, t = torch.rand(batch) * 0.5, 0.5 + torch.rand(batch) * 0.5
    dt = torch.ones(batch)
    reference = None
    errors = {}
    for name, mech in MECHANISMS.items():
        step(mech, model, x, s, t, dt)
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        reference = grads if reference is None else reference
        errors[name] = float((grads - reference).abs().max() / reference.abs().max())
    times: dict[str, list[float]] = {name: [] for name in MECHANISMS}
    for _ in range(rounds):
        for name, mech in MECHANISMS.items():
            start = time.process_time()
            step(mech, model, x, s, t, dt)
            times[name].append(time.process_time() - start)
    return {name: (statistics.median(v) * 1e3, gemm_calls(lambda m=MECHANISMS[name]: step(m, model, x, s, t, dt)),
                   errors[name]) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--sizes", nargs="+", default=["64x512", "128x512", "256x1024", "256x4096"],
                        help="WIDTHxBATCH of the MLP (depth 4)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import os

    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the start.")
    print("| MLP width x batch | mechanism | CPU ms per JVP + backward | x torch.func.jvp | GEMM calls | max grad diff (rel.) |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        width, batch = (int(v) for v in size.split("x"))
        got = measure(width, batch, args.rounds)
        base = got["torch.func.jvp"][0]
        for name, (ms, gemms, err) in got.items():
            print(f"| {width} x {batch} | {name} | {ms:.2f} | {ms / base:.2f} | {gemms} | {err:.1e} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end. Command: "
          f"`nice -n 5 .venv/bin/python benchmarks/jvp_mechanisms.py --rounds {args.rounds} --sizes {' '.join(args.sizes)}`")


if __name__ == "__main__":
    main()
