"""``optim.implementation``: fused, foreach and one-parameter-at-a-time updates agree; "auto" takes the fused one."""

from __future__ import annotations

import pytest
import torch

from fmmkit.core.errors import UserError
from fmmkit.core.validators import SpecValueError
from fmmkit.spec.schema import OptimConfig
from fmmkit.training.optim import fused_applies, make_optimizer


def _train(implementation: str, name: str = "adam", steps: int = 20) -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))
    opt = make_optimizer(list(net.parameters()), OptimConfig(name=name, lr=1e-2, weight_decay=0.01,
                                                             implementation=implementation))
    x = torch.randn(64, 3)
    for _ in range(steps):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_implementations_agree(name: str) -> None:
    fused, foreach, loop = (_train(kind, name) for kind in ("fused", "foreach", "for_loop"))
    start = _train("for_loop", name, steps=0)
    for f, e, lp, s in zip(fused, foreach, loop, start):
        assert (lp - s).abs().max() > 1e-3  # the parameters moved, so agreement is not trivial
        torch.testing.assert_close(f, lp, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(e, lp, rtol=1e-5, atol=1e-6)


def test_auto_takes_the_fused_update_where_it_applies() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert make_optimizer(params, OptimConfig()).defaults["fused"] is True
    assert make_optimizer(params, OptimConfig(name="radam")).defaults.get("fused") in (None, False)
    assert not fused_applies([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))], OptimConfig())


def test_auto_is_the_fused_update_to_the_bit() -> None:
    for a, b in zip(_train("auto"), _train("fused")):
        assert torch.equal(a, b)


def test_fused_radam_is_a_spec_error_and_fused_needs_floats() -> None:
    with pytest.raises(SpecValueError, match="implementation"):
        OptimConfig(name="radam", implementation="fused")
    with pytest.raises(UserError, match="optim.implementation"):
        make_optimizer([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))], OptimConfig(implementation="fused"))
