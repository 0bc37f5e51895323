"""Students that start from their teacher: at step 0, v_{s,t}(x) = v_{t,t}(x) = the teacher's b_t(x) exactly."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pretrained_helpers import randomise

from fmmkit.core import BuildContext, FlowMap
from fmmkit.core.teacher_init import TeacherInitError, check_starts_at_teacher, enable_second_time, load_teacher_state
from fmmkit.external.modules import ModuleLoadError
from fmmkit.registry import get_registry
from fmmkit.spec import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")

TABLES: dict[str, tuple[dict[str, Any], tuple[int, ...], int | None]] = {
    "mlp_s_t": ({"kind": "mlp", "width": 32, "depth": 2, "time_dim": 8}, (2,), None),
    "mlp_t_delta_labels": ({"kind": "mlp", "width": 32, "depth": 2, "time_dim": 8, "time_pair": "t_delta"}, (2,), 3),
    "unet": ({"kind": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4],
              "groups": 4, "num_heads": 2, "time_dim": 8, "dropout": 0.0}, (1, 8, 8), 10),
    "dit_t_delta": ({"kind": "dit", "depth": 2, "hidden_size": 32, "num_heads": 2, "patch_size": 2, "time_dim": 8,
                     "time_pair": "t_delta"}, (1, 8, 8), None),
}


def backbone(table: dict[str, Any], shape: tuple[int, ...], classes: int | None) -> torch.nn.Module:
    spec = load_spec({"data": {"kind": "gaussian", "mean": [0.0], "std": [1.0]}, "loss": {"kind": "flow_matching"},
                      "model": table})
    ctx = BuildContext(data_shape=shape, num_classes=classes)
    return get_registry().build("backbone", spec.model.kind, spec.model.config, ctx)


@pytest.mark.parametrize("name", list(TABLES))
def test_a_student_starts_exactly_at_its_teacher(name: str) -> None:
    table, shape, classes = TABLES[name]
    torch.manual_seed(0)
    teacher = FlowMap(randomise(backbone(table, shape, classes))).eval()  # output layers are zero at init
    student = FlowMap(backbone(table, shape, classes)).eval()
    added = enable_second_time(student.backbone)
    assert added and all("second" in k for k in added)
    load_teacher_state(student.backbone, teacher.backbone.state_dict(), added, "the teacher")
    g = torch.Generator().manual_seed(1)
    x = torch.randn((16, *shape), generator=g)
    s, t = torch.rand(16, generator=g), torch.rand(16, generator=g)
    y = torch.randint(classes + 1, (16,), generator=g) if classes else None  # the null class too
    with torch.no_grad():
        b = teacher.velocity(x, t, y)
        assert b.abs().max() > 1e-3
        assert torch.equal(student.velocity(x, t, y), b)  # v_{t,t} = b_t, bit for bit
        assert torch.equal(student.average_velocity(x, s, t, y), b)  # v_{s,t} = v_{t,t} for every s
    assert check_starts_at_teacher(student, teacher, shape, classes) == 0.0


def test_the_second_time_embedding_learns() -> None:
    table, shape, classes = TABLES["unet"]
    teacher = FlowMap(randomise(backbone(table, shape, classes)))
    student = FlowMap(backbone(table, shape, classes))
    added = enable_second_time(student.backbone)
    load_teacher_state(student.backbone, teacher.backbone.state_dict(), added, "the teacher")
    x, s, t = torch.randn(8, *shape), torch.zeros(8), torch.ones(8)
    optimiser = torch.optim.Adam([p for n, p in student.backbone.named_parameters() if n in added], lr=1e-2)
    for _ in range(3):
        optimiser.zero_grad()
        student.average_velocity(x, s, t).pow(2).mean().backward()
        optimiser.step()
    with torch.no_grad():
        assert not torch.allclose(student.average_velocity(x, s, t), student.velocity(x, t))


def _converted_teacher(factory: str) -> Any:
    from fmmkit.teachers.torch_module import TorchModuleTeacher, TorchModuleTeacherConfig

    config = TorchModuleTeacherConfig(factory=factory, prediction="epsilon", process="vp", schedule="cosine")
    return TorchModuleTeacher.build(config, BuildContext(data_shape=(1, 8, 8))), config


def _student(config: Any) -> Any:
    from fmmkit.nets.torch_module import TorchModuleBackbone, TorchModuleBackboneConfig

    fields = {f.name: getattr(config, f.name) for f in TorchModuleBackboneConfig.__attrs_attrs__ if hasattr(config, f.name)}
    return TorchModuleBackbone(TorchModuleBackboneConfig(**fields), (1, 8, 8), None)


def test_a_torch_module_student_following_the_protocol_starts_at_its_teacher() -> None:
    teacher, config = _converted_teacher("pretrained_helpers:second_time_conv")
    randomise(teacher.module)
    student = FlowMap(_student(config))
    added = enable_second_time(student.backbone)
    assert added == {"module.second.0.weight", "module.second.0.bias", "module.second.2.weight", "module.second.2.bias"}
    load_teacher_state(student.backbone, teacher.state_dict(), added, "the teacher")
    x, s, t = torch.randn(6, 1, 8, 8), torch.rand(6), torch.rand(6)
    with torch.no_grad():
        assert torch.equal(student.average_velocity(x, s, t), teacher.velocity(x, t))
    assert check_starts_at_teacher(student, teacher, (1, 8, 8), None) == 0.0


def test_protocol_violations_are_one_line_errors() -> None:
    teacher, config = _converted_teacher("pretrained_helpers:time_conv")  # no second_time at all
    with pytest.raises(ModuleLoadError, match=r"^model.factory: TimeConv.forward takes no second_time keyword"):
        enable_second_time(_student(config))
    teacher, config = _converted_teacher("pretrained_helpers:LeakySecondTime")  # not zero-initialised
    student = FlowMap(_student(config))
    load_teacher_state(student.backbone, teacher.state_dict(), enable_second_time(student.backbone), "the teacher")
    with pytest.raises(TeacherInitError, match=r"^model.init_from: at step 0 the student's v_s,t differs"):
        check_starts_at_teacher(student, teacher, (1, 8, 8), None)
    table, shape, classes = TABLES["unet"]
    wide = backbone({**table, "channels": 16}, shape, classes)
    student_unet = backbone(table, shape, classes)
    with pytest.raises(TeacherInitError, match=r"^model.init_from: '.*' is \(.*\) in the teacher but"):
        load_teacher_state(student_unet, wide.state_dict(), enable_second_time(student_unet), "the teacher")

    class NoOptIn(torch.nn.Linear):
        pass

    with pytest.raises(TeacherInitError, match=r"^model.init_from: backbone NoOptIn cannot start from a teacher"):
        enable_second_time(NoOptIn(2, 2))
