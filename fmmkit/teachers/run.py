"""``run`` teacher: the velocity b_t = v_{t,t} of a run fmmkit trained, frozen (eval mode, no gradients).

A spec says ``[teacher] run = "RUN_DIR"`` (``kind = "run"`` is implied); the spec loader resolves
RUN_DIR against the spec's own folder and checks it holds a trained run. The teacher must have been
trained on points of the same shape as the student's data.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from fmmkit.core import BuildContext, Component, VelocityField
from fmmkit.core.validators import SpecValueError
from fmmkit.hookspecs import hookimpl


@attrs.define(frozen=True)
class RunTeacherConfig:
    """run: the directory of a trained run (resolved to an absolute path by the spec loader)."""

    run: str = ""


class RunTeacher(Component):
    """Loads the run (its sampling weights) and returns a frozen copy of its flow map."""

    Config = RunTeacherConfig

    @classmethod
    def available(cls, config: RunTeacherConfig) -> bool:
        """Whether the run directory still holds its weights."""
        from fmmkit.runs.layout import RUN_MARKERS

        return all((Path(config.run) / marker).is_file() for marker in RUN_MARKERS)

    @classmethod
    def build(cls, config: RunTeacherConfig, ctx: BuildContext) -> VelocityField:
        from fmmkit.runs.run import load_run

        run = load_run(config.run, registry=ctx.extras.get("registry"))
        if ctx.data_shape and tuple(run.data.shape) != tuple(ctx.data_shape):
            raise SpecValueError("run", f"the teacher was trained on points of shape {tuple(run.data.shape)} "
                                        f"but this spec's data has shape {tuple(ctx.data_shape)}")
        return run.frozen_model()


@hookimpl
def register_teachers(register) -> None:  # type: ignore[no-untyped-def]
    register("run", RunTeacher)
