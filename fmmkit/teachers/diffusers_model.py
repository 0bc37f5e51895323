"""``diffusers`` teacher: a local diffusers UNet2DModel or DiTTransformer2DModel, its scheduler config read
to choose the conversion to fmmkit's velocity.

    [teacher]
    kind = "diffusers"
    path = "models/my_ddpm"        # a folder save_pretrained wrote (pipeline, or unet/ + scheduler/)
    guidance = 4.0                 # optional classifier-free guidance (class-conditional models)

Needs the optional extra ``pip install 'fmmkit[diffusers]'``. The scheduler config decides process
and prediction (:mod:`fmmkit.external.diffusers_folder` lists the rules; :mod:`fmmkit.conversion`
the formulas); ``prediction`` overrides the config's prediction_type when it is wrong. A network with
out_channels = 2 in_channels (DiT's learn_sigma) predicts a variance too: its first half is used, as
diffusers' DiTPipeline does. DiT's null class is its num_embeds_ada_norm; a class-conditional
UNet2DModel needs ``null_label`` for unconditional passes. Text-conditioned models: ``torch_module``.
"""

from __future__ import annotations

import attrs

from fmmkit.conversion import PREDICTIONS
from fmmkit.core import BuildContext, Component
from fmmkit.core.validators import non_negative, one_of
from fmmkit.external.converted import ConvertedVelocity, ModuleCall
from fmmkit.external.diffusers_folder import (
    find_folder,
    learns_variance,
    load_network,
    network_labels,
    network_shape,
    require_diffusers,
    scheduler_conversion,
)
from fmmkit.external.modules import ModuleLoadError, frozen
from fmmkit.hookspecs import hookimpl


@attrs.define(frozen=True)
class DiffusersTeacherConfig:
    """path: a local diffusers folder; subfolder: the network's sub-folder (default: unet or transformer);
    scheduler: the scheduler folder (default PATH/scheduler); prediction: override the scheduler's
    prediction_type (velocity, epsilon, x0, v, score, edm_denoiser); guidance: classifier-free guidance
    weight w (1 = none); null_label: the network's "no class" label (DiT: read from its config)."""

    path: str
    subfolder: str | None = None
    scheduler: str | None = None
    prediction: str | None = attrs.field(default=None, validator=one_of(PREDICTIONS))
    guidance: float = attrs.field(default=1.0, validator=non_negative)
    null_label: int | None = attrs.field(default=None, validator=non_negative)


class DiffusersTeacher(Component):
    """Builds a frozen :class:`ConvertedVelocity` around a diffusers network and its scheduler's conversion."""

    Config = DiffusersTeacherConfig

    @classmethod
    def interpolant_kind(cls, config: DiffusersTeacherConfig) -> str | None:
        """The fmmkit interpolant its scheduler's process is (flow matching: linear; DDPM/EDM/VE: trig); None when
        the folder cannot be read yet (building the teacher then says why)."""
        import json
        from pathlib import Path

        folder = Path(config.scheduler or Path(config.path) / "scheduler").expanduser()
        try:
            name = str(json.loads((folder / "scheduler_config.json").read_text()).get("_class_name", ""))
        except (OSError, ValueError):
            return None
        return "linear" if name.startswith("FlowMatch") else "trig"

    @classmethod
    def build(cls, config: DiffusersTeacherConfig, ctx: BuildContext) -> ConvertedVelocity:
        require_diffusers("teacher.kind: 'diffusers'")
        folder = find_folder(config.path, config.subfolder, config.scheduler, "teacher")
        conversion = scheduler_conversion(folder, config.prediction, "teacher")
        network = frozen(load_network(folder, "teacher"))
        shape = network_shape(network)
        if shape is not None and tuple(ctx.data_shape) and shape != tuple(ctx.data_shape):
            raise ModuleLoadError(f"teacher.path: the model takes samples of shape {shape} but the data has shape "
                                  f"{tuple(ctx.data_shape)}; use data of its shape (latents: data kind = \"latent\")")
        takes_labels, own_null = network_labels(network)
        if ctx.num_classes and not takes_labels:
            raise ModuleLoadError("teacher.path: the model takes no class labels but the data has them; "
                                  "set labels = false in [data]")
        null = config.null_label if config.null_label is not None else own_null
        if takes_labels and null is None and not ctx.num_classes:
            raise ModuleLoadError("teacher.null_label: the model is class-conditional and the data unlabelled, so every "
                                  "pass is unconditional; set null_label to the model's \"no class\" label")
        call = ModuleCall("teacher", learned_variance=learns_variance(network), num_classes=ctx.num_classes,
                          null_label=null, takes_labels=takes_labels)
        teacher = ConvertedVelocity(network, conversion, call, config.guidance)
        teacher.check(ctx.data_shape, ctx.num_classes)
        return teacher


@hookimpl
def register_teachers(register) -> None:  # type: ignore[no-untyped-def]
    register("diffusers", DiffusersTeacher)
