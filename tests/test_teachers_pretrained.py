"""``torch_module`` and ``diffusers`` teachers: the same velocity both ways, scheduler configs read right,
and every bad input a one-line error naming the spec key and the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    ScoreSdeVeScheduler,
)
from pretrained_helpers import TINY_DIT, save_dit_folder, save_unet_folder, unet_kwargs
from safetensors.torch import save_file

from fmmkit.conversion import LinearProcess, VEProcess, VPDiscrete
from fmmkit.core import BuildContext
from fmmkit.external.modules import ModuleLoadError
from fmmkit.teachers.diffusers_model import DiffusersTeacher, DiffusersTeacherConfig
from fmmkit.teachers.torch_module import TorchModuleTeacher, TorchModuleTeacherConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PIXELS = BuildContext(data_shape=(1, 8, 8))
LATENTS = BuildContext(data_shape=(4, 4, 4), num_classes=10)


def diffusers_teacher(path: Path, ctx: BuildContext = PIXELS, **config):  # type: ignore[no-untyped-def]
    return DiffusersTeacher.build(DiffusersTeacherConfig(path=str(path), **config), ctx)


def module_teacher(ctx: BuildContext = PIXELS, **config):  # type: ignore[no-untyped-def]
    return TorchModuleTeacher.build(TorchModuleTeacherConfig(**config), ctx)


def velocities(teacher, shape, n: int = 6, y=None):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn((n, *shape), generator=g), torch.rand(n, generator=g)
    with torch.no_grad():
        return teacher.velocity(x, t, y)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_a_ddpm_unet_gives_the_same_velocity_through_diffusers_and_torch_module(tmp_path: Path, prediction_type: str) -> None:
    folder = save_unet_folder(tmp_path, DDPMScheduler(prediction_type=prediction_type, beta_schedule="squaredcos_cap_v2"))
    through_diffusers = diffusers_teacher(folder)
    through_module = module_teacher(factory="diffusers:UNet2DModel", kwargs=unet_kwargs(),
                                    weights=str(folder / "unet" / "diffusion_pytorch_model.safetensors"),
                                    prediction={"epsilon": "epsilon", "v_prediction": "v", "sample": "x0"}[prediction_type],
                                    process="vp", schedule="cosine")
    a, b = velocities(through_diffusers, (1, 8, 8)), velocities(through_module, (1, 8, 8))
    assert a.abs().max() > 0.1
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_a_flow_matching_dit_with_labels_and_guidance_matches_torch_module(tmp_path: Path) -> None:
    folder = save_dit_folder(tmp_path, FlowMatchEulerDiscreteScheduler(shift=3.0))
    through_diffusers = diffusers_teacher(folder, LATENTS, guidance=2.5)
    through_module = module_teacher(LATENTS, factory="diffusers:DiTTransformer2DModel", kwargs=TINY_DIT,
                                    weights=str(folder / "transformer" / "diffusion_pytorch_model.safetensors"),
                                    prediction="velocity", process="linear", time_direction="noise_at_1",
                                    time_scale=1000.0, learned_variance=True, null_label=10, guidance=2.5)
    y = torch.tensor([0, 3, 9, 10, 5, 10])  # 10 = fmmkit's null class: unconditional rows
    a, b = velocities(through_diffusers, (4, 4, 4), y=y), velocities(through_module, (4, 4, 4), y=y)
    assert a.abs().max() > 0.1
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # guidance: b_null + w (b_y - b_null), from the unguided conditional and null passes
    x, t = torch.randn(6, 4, 4, 4), torch.rand(6)
    with torch.no_grad():
        cond, null = through_module.unguided_velocity(x, t, y), through_module.unguided_velocity(x, t, None)
        torch.testing.assert_close(through_module.velocity(x, t, y), null + 2.5 * (cond - null))


def test_scheduler_configs_choose_the_conversion(tmp_path: Path) -> None:
    def conversion(scheduler):  # type: ignore[no-untyped-def]
        folder = tmp_path / type(scheduler).__name__ / scheduler.config.get("prediction_type", "velocity")
        return diffusers_teacher(save_unet_folder(folder, scheduler)).conversion

    ddim = conversion(DDIMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear",
                                    beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True))
    assert isinstance(ddim.process, VPDiscrete) and ddim.prediction == "v"
    assert ddim.process.time_range()[0] < 1e-3  # zero terminal SNR reaches (almost) pure noise
    euler = conversion(EulerDiscreteScheduler(prediction_type="v_prediction", timestep_type="continuous"))
    assert euler.process.model_time == "log_sigma" and euler.prediction == "v"  # type: ignore[attr-defined]
    flow = conversion(FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0))
    assert isinstance(flow.process, LinearProcess) and flow.process.time_scale == 1000.0 and flow.prediction == "velocity"
    edm = conversion(EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, prediction_type="v_prediction"))
    assert isinstance(edm.process, VEProcess) and edm.prediction == "edm_denoiser" and edm.edm_output_sign == -1.0
    ve = conversion(ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0))
    assert ve.prediction == "score" and ve.process.sigma_max == 50.0  # type: ignore[attr-defined]


def test_the_edm_conversion_is_diffusers_preconditioning(tmp_path: Path) -> None:
    """D = c_skip x + c_out F(c_in x, c_noise) exactly as EDMEulerScheduler computes it."""
    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    teacher = diffusers_teacher(save_unet_folder(tmp_path, scheduler))
    t = torch.full((3,), 0.3, dtype=torch.float64)
    x = torch.randn(3, 1, 8, 8)
    sigma = VEProcess(0.002, 80.0).sigma(t).float()
    x_ve = x * torch.sqrt(1 + sigma**2)[:, None, None, None]  # the VE state of fmmkit's I_t
    with torch.no_grad():
        raw = teacher.module(scheduler.precondition_inputs(x_ve, sigma[:, None, None, None]),
                             scheduler.precondition_noise(sigma)).sample
        denoised = scheduler.precondition_outputs(x_ve, raw, sigma[:, None, None, None])
        b = teacher.velocity(x, t.float())
    # trig: b = alpha' E[x0|x] + beta' E[x1|x] with E[x1|x] = D, E[x0|x] = (x_ve - D) / sigma
    tt = t.float()[:, None, None, None]
    alpha_p, beta_p = -torch.pi / 2 * torch.sin(torch.pi * tt / 2), torch.pi / 2 * torch.cos(torch.pi * tt / 2)
    want = alpha_p * (x_ve - denoised) / sigma[:, None, None, None] + beta_p * denoised
    torch.testing.assert_close(b, want, rtol=1e-4, atol=1e-4)


def test_a_pickle_is_refused_without_allow_pickle_and_read_safely_with_it(tmp_path: Path) -> None:
    from pretrained_helpers import time_conv

    path = tmp_path / "net.pt"
    torch.save({"ema": time_conv().state_dict()}, path)
    config = {"factory": "pretrained_helpers:time_conv", "weights": str(path), "prediction": "velocity",
              "process": "linear", "time_direction": "noise_at_0"}
    with pytest.raises(ModuleLoadError) as err:
        module_teacher(**config)
    assert str(err.value).startswith("teacher.weights: ") and "allow_pickle = true" in str(err.value)
    assert "runs the code" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModuleLoadError, match=r'set weights_prefix = "ema\."'):
        module_teacher(**config, allow_pickle=True)
    teacher = module_teacher(**config, allow_pickle=True, weights_prefix="ema.")
    assert torch.equal(teacher.module.conv.weight, time_conv().conv.weight)


def _message(**config) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ModuleLoadError) as err:
        module_teacher(**{"prediction": "velocity", "process": "linear", "time_direction": "noise_at_0", **config})
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_bad_torch_module_inputs_are_one_line_errors_naming_the_key(tmp_path: Path) -> None:
    assert _message(factory="no_such_package.models:build").startswith("teacher.factory: cannot import 'no_such_package.models'")
    assert _message(factory="pretrained_helpers:nope").startswith("teacher.factory: 'pretrained_helpers' has no attribute 'nope'")
    assert _message(factory="pretrained_helpers").startswith("teacher.factory: 'pretrained_helpers' is not \"package.module:function\"")
    assert _message(factory="pretrained_helpers:raising_factory").startswith("teacher.kwargs: ")
    assert "not a torch.nn.Module" in _message(factory="pretrained_helpers:not_a_module")
    assert _message(factory="pretrained_helpers:time_conv", weights=str(tmp_path / "none.safetensors")).startswith(
        "teacher.weights: no file")
    from pretrained_helpers import time_conv

    save_file(time_conv(channels=2).state_dict(), str(tmp_path / "two.safetensors"))
    text = _message(factory="pretrained_helpers:time_conv", weights=str(tmp_path / "two.safetensors"))
    assert text.startswith("teacher.weights: 'conv.") and " is (2" in text and "check teacher.kwargs" in text
    # a prediction with a learned variance (2C channels) where the spec says a plain prediction
    text = _message(factory="pretrained_helpers:time_conv", kwargs={"double_output": True})
    assert text.startswith("teacher.prediction: the module returns (2, 2, 8, 8)") and "learned_variance = true" in text
    assert "module(x, time)" in _message(factory="torch.nn:Identity")


def test_bad_diffusers_inputs_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def message(path: Path, ctx: BuildContext = PIXELS, **config) -> str:  # type: ignore[no-untyped-def]
        with pytest.raises(ModuleLoadError) as err:
            diffusers_teacher(path, ctx, **config)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert message(tmp_path / "missing").startswith("teacher.path: no folder")
    (tmp_path / "empty").mkdir()
    assert message(tmp_path / "empty").startswith("teacher.path: ") and "holds no diffusers model" in message(tmp_path / "empty")
    folder = save_unet_folder(tmp_path / "ok", DDPMScheduler())
    assert "data has shape (3, 8, 8)" in message(folder, BuildContext(data_shape=(3, 8, 8)))
    assert "set labels = false" in message(folder, BuildContext(data_shape=(1, 8, 8), num_classes=10))
    import shutil

    shutil.rmtree(folder / "scheduler")
    assert message(folder).startswith("teacher.scheduler: no scheduler_config.json")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if the extra were not installed
    assert message(tmp_path / "ok") == ("teacher.kind: 'diffusers': needs the diffusers package, an optional extra of "
                                        "fmmkit: pip install 'fmmkit[diffusers]'")


def test_spec_level_validation_of_the_conversion_keys() -> None:
    from fmmkit.spec import SpecError, load_spec

    base = {"data": {"kind": "digits"}, "loss": {"kind": "lagrangian_distillation"}, "model": {"kind": "mlp"}}

    def problem(teacher: dict) -> str:  # type: ignore[type-arg]
        with pytest.raises(SpecError) as err:
            load_spec({**base, "teacher": {"kind": "torch_module", "factory": "x:y", **teacher}})
        return str(err.value)

    assert problem({"prediction": "velocity", "process": "linear"}).startswith(
        "<dict>: teacher.time_direction: required for process = \"linear\"")
    assert problem({"prediction": "eps", "process": "vp"}).startswith("<dict>: teacher.prediction: must be one of")
    assert "applies to process = 'vp'" in problem({"prediction": "epsilon", "process": "edm", "schedule": "cosine"})
    assert "edm_denoiser is EDM's preconditioning" in problem({"prediction": "edm_denoiser", "process": "vp"})


def test_input_and_output_scales_reach_the_module() -> None:
    from fmmkit.exact import GaussianFlowMap
    from fmmkit.interpolants.linear import LinearInterpolant

    ctx = BuildContext(data_shape=(3,))
    teacher = module_teacher(ctx, factory="pretrained_helpers:ScaledGaussianVelocity",
                             kwargs={"input_scale": 2.0, "output_scale": 0.25}, input_scale=2.0, output_scale=0.25,
                             prediction="velocity", process="linear", time_direction="noise_at_0")
    x, t = torch.randn(8, 3), torch.rand(8)
    want = GaussianFlowMap(LinearInterpolant(), torch.tensor(0.5), torch.tensor(0.3)).velocity(x, t)
    torch.testing.assert_close(teacher.velocity(x, t), want)


def test_null_rows_without_a_null_label_get_an_unlabelled_pass() -> None:
    ctx = BuildContext(data_shape=(1, 8, 8), num_classes=3)
    teacher = module_teacher(ctx, factory="pretrained_helpers:time_conv", kwargs={"classes": 3},
                             prediction="velocity", process="linear", time_direction="noise_at_0")
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 3, 1, 3])  # 3 = fmmkit's null class
    with torch.no_grad():
        got = teacher.velocity(x, t, y)
        labelled = teacher.module(x, t, torch.tensor([0, 0, 1, 0]))
        unlabelled = teacher.module(x, t)
    assert torch.equal(got[[0, 2]], labelled[[0, 2]]) and torch.equal(got[[1, 3]], unlabelled[[1, 3]])


def test_docstring_examples_run() -> None:
    import doctest

    import fmmkit.conversion.predictions
    import fmmkit.external.converted

    for module in (fmmkit.conversion.predictions, fmmkit.external.converted):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
