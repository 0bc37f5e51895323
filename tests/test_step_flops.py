"""The GEMM work of one training step of each derivative loss equals its count of network passes.

FLOPs are exact and load-independent (``torch.utils.flop_counter``), so this pins what issue 13's goal 3
asks of the machinery, "fewer passes": every pass a loss shares (the JVP's primal as the map, a
linear layer's tangent as one product, the s = t rows without a JVP, a teacher call that leaves rows
without gradient out of its backward) shows here, and a pass added by mistake fails the test.

Unit: one hidden-layer product of the MLP for one batch row (width 512, so the input and output
layers add under 1%). Per row, flow matching is a forward (3) and a backward through inputs and
weights (6): 9. A JVP is a primal and a tangent forward (6); a backward through both is 12, through
the primal only (a detached tangent) 6; a stop-gradient pass 3; the backward through a frozen
teacher's input (no weight gradients) 3. A share eta of s = t rows costs flow matching's 9 (the
distillation losses: the student's 9 plus the teacher's forward 3).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fmmkit.core import Batch

from test_jvp_mechanism import build_model, make_loss, nonzero_output

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH, BATCH = 512, 256
TABLE = {"kind": "mlp", "width": WIDTH, "depth": 4, "time_dim": 2, "zero_init_output": False}

#: (loss, extra config, units per s = t row, units per s != t row)
PASSES: list[tuple[str, dict[str, Any], float, float]] = [
    # JVP 6 + backward through primal and tangent 12 + the target pass v_{t,t}(sg X) 3
    ("lagrangian_self_distillation", {}, 9, 21),
    # the two jumps' stop-gradient passes 3 + 3, and the trained jump's forward and backward 9
    ("progressive_self_distillation", {}, 9, 15),
    # JVP 6 + backward through the primal only (the MeanFlow target is under stop-gradient) 6
    ("meanflow", {}, 9, 12),
    # the velocity pass with gradient 9 + JVP 6 + backward through its primal 6
    ("improved_meanflow", {}, 9, 21),
    # JVP 6 + backward through both 12 + teacher 3 + the backward through the teacher's input 3
    ("lagrangian_distillation", {}, 12, 24),
    ("lagrangian_distillation", {"semigradient": True}, 12, 21),
    ("lagrangian_distillation", {"times": {"diagonal_fraction": 0.5}}, 12, 24),
    # teacher 3 + JVP 6 + backward through both 12 (semigradient: through the primal only, 6)
    ("eulerian_distillation", {}, 12, 21),
    ("eulerian_distillation", {"semigradient": True}, 12, 15),
    ("eulerian_distillation", {"times": {"diagonal_fraction": 0.5}}, 12, 21),
]


def step_flops(name: str, extra: dict[str, Any] | None = None) -> tuple[int, float]:
    """(GEMM FLOPs of one loss + backward on a fixed batch, the loss's s = t share)."""
    model = nonzero_output(build_model(TABLE, (2,)))
    teacher = nonzero_output(build_model(TABLE, (2,))).eval().requires_grad_(False)
    loss = make_loss(name, (2,), teacher, extra)
    torch.manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        loss(model, Batch(torch.randn(BATCH, 2)), teacher=teacher, step=10_000).loss.backward()
    return counter.get_total_flops(), loss.times.diagonal_fraction


@pytest.mark.parametrize(("name", "extra", "diagonal", "off_diagonal"), PASSES)
def test_a_training_step_costs_its_count_of_network_passes(name: str, extra: dict[str, Any], diagonal: float,
                                                           off_diagonal: float) -> None:
    unit = 2 * BATCH * WIDTH * WIDTH
    flow_matching, _ = step_flops("flow_matching")
    assert abs(flow_matching / unit - 9) < 0.1
    flops, eta = step_flops(name, extra)
    expected = eta * diagonal + (1 - eta) * off_diagonal
    assert abs(flops / unit - expected) < 0.015 * expected, \
        f"{name} {extra}: {flops / unit:.2f} hidden-layer products per row, expected {expected:.2f} (eta = {eta})"
