"""``run`` teacher: the velocity b_t = v_{t,t} of a run fmmkit trained, frozen (eval mode, no gradients).

A spec says ``[teacher] run = "RUN_DIR"`` (``kind = "run"`` is implied); the spec loader resolves
RUN_DIR against the spec's own folder and checks it holds a trained run. The teacher must have been
trained on points of the same shape as the student's data.

Autoguidance (Karras et al. 2024; distillation with it: AYF, 2506.14603): ``guide_run = "WEAK_RUN_DIR"``
with ``guide_weight = w`` makes the teacher b = g + w (b_teacher - g), g the velocity of a weaker run
(a smaller or shorter-trained model of the same data; :class:`fmmkit.losses.guidance.AutoGuided`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from fmmkit.core import BuildContext, Component, VelocityField
from fmmkit.core.validators import SpecValueError, non_negative
from fmmkit.losses.guidance import AutoGuided
from fmmkit.hookspecs import hookimpl


@attrs.define(frozen=True)
class RunTeacherConfig:
    """run: the directory of a trained run (resolved to an absolute path by the spec loader);
    guide_run: a weaker run for autoguidance ("" = none) and guide_weight w (1 = the teacher itself)."""

    run: str = ""
    guide_run: str = ""
    guide_weight: float = attrs.field(default=1.0, validator=non_negative)


class RunTeacher(Component):
    """Loads the run (its sampling weights) and returns a frozen copy of its flow map."""

    Config = RunTeacherConfig

    @classmethod
    def missing(cls, config: RunTeacherConfig) -> list[str]:
        """The files of a trained run that the directory lacks (none for a trained run)."""
        from fmmkit.runs.layout import missing_run_files

        return [f"{key} {marker}" for key, run in (("run", config.run), ("guide_run", config.guide_run)) if run
                for marker in missing_run_files(run)]

    @classmethod
    def available(cls, config: RunTeacherConfig) -> bool:
        """Whether the run directories (the teacher and its guide) still hold their weights."""
        return not cls.missing(config)

    @classmethod
    def student_model(cls, config: RunTeacherConfig) -> dict[str, Any] | None:
        """The teacher run's [model] table: a student that starts from it (``init_from = "teacher"``) has its
        architecture. None when the run's spec cannot be read (the run check reports that)."""
        from fmmkit.runs.layout import SPEC_FILE
        from fmmkit.spec.errors import SpecError
        from fmmkit.spec.loader import read_toml

        try:
            model = read_toml(Path(config.run) / SPEC_FILE).get("model")
        except SpecError:
            return None
        if not isinstance(model, dict):
            return None
        return {k: v for k, v in model.items() if k != "init_from"}

    @classmethod
    def build(cls, config: RunTeacherConfig, ctx: BuildContext) -> VelocityField:
        from fmmkit.runs.run import load_run

        registry = ctx.extras.get("registry")
        run = load_run(config.run, registry=registry)
        if ctx.data_shape and tuple(run.data.shape) != tuple(ctx.data_shape):
            raise SpecValueError("run", f"the teacher was trained on points of shape {tuple(run.data.shape)} "
                                        f"but this spec's data has shape {tuple(ctx.data_shape)}")
        teacher = frozen(run)
        if not config.guide_run:
            return teacher
        guide = load_run(config.guide_run, registry=registry)
        if tuple(guide.data.shape) != tuple(run.data.shape):
            raise SpecValueError("guide_run", f"the guide was trained on points of shape {tuple(guide.data.shape)}, "
                                              f"the teacher on {tuple(run.data.shape)}")
        return AutoGuided(teacher, frozen(guide), config.guide_weight)


def frozen(run: Any) -> Any:
    """The run's frozen flow map, marked with whether its off-diagonal was trained (``trains_flow_map``)."""
    model = run.frozen_model()
    model.trains_flow_map = getattr(run.registry.get("loss", run.spec.loss.kind).component, "trains_flow_map", True)
    return model


@hookimpl
def register_teachers(register) -> None:  # type: ignore[no-untyped-def]
    register("run", RunTeacher)
