"""``[model] init_from``: the student backbone starts from its teacher's weights (or a run's, or a file's).

:func:`fmmkit.spec.build.build_model` already switched the backbone to its second-time form
(:func:`fmmkit.core.teacher_init.enable_second_time`), so a run trained this way reloads; here the
weights are loaded once, before training, and with ``init_from = "teacher"`` the step-0 identity
v_{s,t}(x) = b^_t(x) is checked on a probe batch.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from fmmkit.core import DataSource, FlowMap
from fmmkit.core.teacher_init import TeacherInitError, check_starts_at_teacher, load_teacher_state, teacher_state


def state_from_path(path: str, where: str = "model.init_from") -> dict[str, Tensor]:
    """Backbone weights of a run directory (the weights sampling uses) or a safetensors file ("backbone." removed)."""
    from safetensors.torch import load_file

    from fmmkit.runs.run import load_run

    if Path(path).is_dir():
        return load_run(path).model.backbone.state_dict()
    try:
        state = load_file(path)
    except Exception as exc:
        raise TeacherInitError(f"{where}: cannot read '{path}' as safetensors ({type(exc).__name__}: {exc})") from None
    if state and all(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items()}
    return state


def start_from(model: FlowMap, init_from: str, teacher: nn.Module | None, data: DataSource) -> None:
    """Load the starting weights into ``model``'s backbone (module docstring)."""
    if init_from == "teacher":
        assert teacher is not None, "init_from = 'teacher' is checked against [teacher] when the spec loads"
        load_teacher_state(model.backbone, teacher_state(teacher), None, "the teacher")
        check_starts_at_teacher(model, teacher, tuple(data.shape), data.num_classes)
    else:
        load_teacher_state(model.backbone, state_from_path(init_from), None, f"'{init_from}'")
