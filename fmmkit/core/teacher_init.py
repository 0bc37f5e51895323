"""Starting a two-time student from a one-time teacher's weights (``[model] init_from``).

The backbone opts in through :meth:`fmmkit.core.Backbone.enable_second_time`; :func:`enable_second_time`
calls it and records the parameters it added, and :func:`load_teacher_state` loads the teacher's
weights into every other parameter, after checking that each one is there with the teacher's shape.
"""

from __future__ import annotations

from torch import Tensor, nn

from fmmkit.core.errors import UserError
from fmmkit.core.flow_map import implements_second_time


class TeacherInitError(UserError):
    """A student cannot start from its teacher (the message names ``model.init_from`` and the fix)."""


def enable_second_time(backbone: nn.Module, where: str = "model.init_from") -> set[str]:
    """Switch ``backbone`` to teacher-diagonal conditioning plus a zero-initialised second-time embedding;
    return the state-dict keys that added."""
    if not implements_second_time(backbone):
        raise TeacherInitError(f"{where}: backbone {type(backbone).__name__} cannot start from a teacher (it does not "
                               "implement enable_second_time()); use unet, dit, mlp or torch_module, or drop init_from")
    before = set(backbone.state_dict())
    backbone.enable_second_time()  # type: ignore[operator]
    after = set(backbone.state_dict())
    if not before <= after:
        raise TeacherInitError(f"{where}: {type(backbone).__name__}.enable_second_time() removed parameters "
                               f"{sorted(before - after)[:3]}; it may only add the new embedding")
    added = after - before
    backbone.second_time_parameters = frozenset(added)  # type: ignore[assignment]
    return added


def load_teacher_state(backbone: nn.Module, state: dict[str, Tensor], added: set[str] | None, source: str,
                       where: str = "model.init_from") -> None:
    """Load a teacher's weights into a backbone after :func:`enable_second_time`.

    Every parameter but the ``added`` ones (default: those :func:`enable_second_time` recorded) must be in
    ``state`` with the same shape; ``state`` may also hold added ones (a two-time teacher), loaded too.
    """
    added = set(added if added is not None else getattr(backbone, "second_time_parameters", ()))
    own = backbone.state_dict()
    missing = sorted(k for k in own if k not in state and k not in added)
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise TeacherInitError(f"{where}: the weights of {source} do not fit the student's model (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}); give [model] the teacher's kind and sizes")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise TeacherInitError(f"{where}: '{key}' is {tuple(value.shape)} in {source} but {tuple(own[key].shape)} in "
                                   "the student's model; give [model] the teacher's sizes")
    backbone.load_state_dict(state, strict=False)


def check_starts_at_teacher(model: nn.Module, teacher: nn.Module, shape: tuple[int, ...], num_classes: int | None,
                            where: str = "model.init_from", tolerance: float = 1e-5) -> float:
    """On a probe batch, max |v_{s,t}(x) - b^_t(x)| / max |b^_t(x)| (random s, t, x); TeacherInitError above
    ``tolerance`` (a second-time embedding that is not zero-initialised, or weights that did not load)."""
    import torch

    g = torch.Generator().manual_seed(0)
    device = next(iter(model.parameters()), torch.zeros(())).device
    x = torch.randn((4, *shape), generator=g).to(device)
    s, t = torch.rand(4, generator=g).to(device), torch.rand(4, generator=g).to(device)
    y = torch.randint(num_classes, (4,), generator=g).to(device) if num_classes else None
    with torch.no_grad():
        student = model.average_velocity(x, s, t, y)  # type: ignore[operator]
        reference = teacher.velocity(x, t, y)  # type: ignore[operator]
    gap = float((student - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    if gap > tolerance:
        raise TeacherInitError(f"{where}: at step 0 the student's v_s,t differs from the teacher's velocity by {gap:.2e} "
                               "(relative); its second-time embedding must start at zero (see fmmkit.nets.torch_module)")
    return gap


def teacher_state(teacher: nn.Module, where: str = "model.init_from") -> dict[str, Tensor]:
    """The backbone weights a student starts from: a flow map's backbone, or a converted module's ("module.*")."""
    backbone = getattr(teacher, "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone.state_dict()
    if isinstance(getattr(teacher, "module", None), nn.Module):
        return teacher.state_dict()
    raise TeacherInitError(f"{where}: the teacher ({type(teacher).__name__}) has no network weights to start from; "
                           "give a run directory or a .safetensors file, or drop init_from")

