"""``flow_matching``: the flow-matching loss that trains a teacher velocity (Lipman et al. 2023).

L(theta) = E_{t, x0, x1, z} |v_{t,t}(I_t) - dI_t/dt|^2, t ~ U[0, 1]      (2505.18825, eq. 3.4)

Its minimiser is b_t(x) = E[dI_t/dt | I_t = x]; at the minimiser the loss equals the irreducible
conditional variance E|dI_t/dt - b_t(I_t)|^2, not 0. Squared errors are averaged over dimensions.
"""

from __future__ import annotations

import attrs

from fmmkit.core import Batch, FlowMap, Loss, LossOutput, VelocityField
from fmmkit.core.shapes import mean_squares
from fmmkit.hookspecs import hookimpl
from fmmkit.timesampling import TimeSampling, stochastic_time_bounds


@attrs.define(frozen=True)
class FlowMatchingConfig:
    """times: where t is drawn."""

    times: TimeSampling = attrs.field(factory=TimeSampling)


class FlowMatching(Loss):
    """|v_{t,t}(I_t) - dI_t/dt|^2: trains the velocity b_t = v_{t,t} of a flow map (a teacher)."""

    Config = FlowMatchingConfig
    trains_flow_map = False

    def __call__(
        self, model: FlowMap, batch: Batch, *, teacher: VelocityField | None = None, step: int = 0
    ) -> LossOutput:
        times = stochastic_time_bounds(self.config.times, self.interpolant.stochastic)
        t = times.sample(len(batch), batch.x1.device)
        path = self.interpolant.draw(batch.x1, t)
        per_sample = mean_squares(model.velocity(path.x_t, t, batch.y) - path.dx_t)
        loss = per_sample.mean()
        return LossOutput(loss, {"flow_matching": loss.detach()})


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("flow_matching", FlowMatching)
