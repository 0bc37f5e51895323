"""``flow_matching``: the flow-matching loss that trains a teacher velocity (Lipman et al. 2023).

L(theta) = E_{t, x0, x1, z} |v_{t,t}(I_t) - dI_t/dt|^2, t ~ U[0, 1]      (2505.18825, eq. 3.4)

Its minimiser is b_t(x) = E[dI_t/dt | I_t = x]; at the minimiser the loss equals the irreducible
conditional variance E|dI_t/dt - b_t(I_t)|^2, not 0. Squared errors are averaged over dimensions.
For a class-conditional teacher set ``[loss.guidance] label_dropout`` (e.g. 0.1) so that the
unconditional velocity b_t(x | null) needed by classifier-free guidance is learned too.
"""

from __future__ import annotations

import attrs

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import FlowMapLoss, LossTables, Term


@attrs.define(frozen=True)
class FlowMatchingConfig(LossTables):
    """times: where t is drawn; weighting; guidance (label dropout, guided target)."""



class FlowMatching(FlowMapLoss):
    """|v_{t,t}(I_t) - dI_t/dt|^2: trains the velocity b_t = v_{t,t} of a flow map (a teacher)."""

    Config = FlowMatchingConfig
    trains_flow_map = False

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        return [self.flow_matching_term(model, batch, "flow_matching")]


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("flow_matching", FlowMatching)
