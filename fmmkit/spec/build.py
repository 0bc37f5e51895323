"""Building what a spec names through the registry: the data, the interpolant and the flow map.

The one module that turns a spec's component tables into these objects, below both run
directories (:mod:`fmmkit.runs`) and training (:mod:`fmmkit.training`); the teacher
(:func:`fmmkit.runs.build_teacher`) and the loss (:func:`fmmkit.training.build.build_pipeline`) are
built above, from these.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fmmkit.core import BuildContext, DataSource, FlowMap, Interpolant, VelocityField
from fmmkit.core.errors import EnvironmentProblem, UserError
from fmmkit.core.flow_map import make_flow_map
from fmmkit.registry import Registry
from fmmkit.spec.errors import SpecError
from fmmkit.spec.schema import Spec

#: the data set of data-free specs (no ``[data]`` table)
PRIOR_DATA = "prior"


def data_problem(spec: Spec, exc: UserError) -> UserError:
    """A data source's error as the spec's: ``SPEC: data.KEY: message`` (exit 1 when the machine, not
    the spec, is in the way: a file the user may not read)."""
    key = getattr(exc, "key", None)
    where = f"data.{key}" if key else "data"
    if exc.exit_status == 1:
        return EnvironmentProblem(f"{spec.source}: {where}: {exc}")
    return SpecError.at(spec.source, where, str(exc))


def build_data(spec: Spec, registry: Registry) -> DataSource:
    """The spec's data set (``[data]``); its errors name ``data.KEY`` of the spec. A data-free source
    (``prior``) gets its teacher's data (shape, labels, reference)."""
    from fmmkit.external.modules import ModuleLoadError

    ctx = BuildContext(extras={"registry": registry})
    if not registry.get("dataset", spec.data.kind).component.holds_data:
        from fmmkit.data.prior import TEACHER_DATA

        ctx.extras[TEACHER_DATA] = teacher_data(spec, registry)
    try:
        return registry.build("dataset", spec.data.kind, spec.data.config, ctx)
    except ModuleLoadError as exc:  # a data set that reads other models (a latent set's VAE)
        raise SpecError([f"{spec.source}: {exc}"]) from None
    except UserError as exc:
        if isinstance(exc, SpecError):
            raise
        raise data_problem(spec, exc) from None


def check_data(spec: Spec, data: DataSource, load: bool = False) -> None:
    """The data can be read (a lazily loaded source's files are there); with ``load``, a first point is
    drawn too, so a lazily loaded source reads (and decodes) its files now (before a run starts)."""
    try:
        data.check_available()
        if load:
            with torch.random.fork_rng(devices=[]):  # its own generator, and no global draw escapes
                data.sample(1, torch.Generator().manual_seed(0))
    except UserError as exc:
        raise data_problem(spec, exc) from None


def teacher_data(spec: Spec, registry: Registry) -> DataSource | None:
    """The data a spec's teacher models: the data set a ``run`` teacher was trained on (built from its
    resolved spec), the population of a ``gaussian`` teacher; None for other teachers."""
    if spec.teacher is None:
        return None
    config = spec.teacher.config
    if spec.teacher.kind == "run":
        from fmmkit.runs.layout import SPEC_FILE
        from fmmkit.spec.loader import read_toml, structure_spec

        path = Path(config.run) / SPEC_FILE
        if not path.is_file():
            return None
        return build_data(structure_spec(read_toml(path), str(path), registry, check_paths=False), registry)
    if spec.teacher.kind == "gaussian":
        from fmmkit.data.gaussian import GaussianData, GaussianDataConfig

        dim = max(len(config.mean), len(config.std))
        return GaussianData(GaussianDataConfig(dim=dim, mean=list(config.mean), std=list(config.std)))
    return None



def build_interpolant(spec: Spec, registry: Registry) -> Interpolant:
    """The spec's interpolant (``[interpolant]``)."""
    return registry.build("interpolant", spec.interpolant.kind, spec.interpolant.config, BuildContext())


def data_context(data: DataSource, interpolant: Interpolant | None = None, teacher: VelocityField | None = None,
                 **extras: object) -> BuildContext:
    """The build context of a component that needs the data's shape and labels (and the interpolant,
    the teacher, or ``extras`` such as the registry)."""
    return BuildContext(data_shape=tuple(data.shape), num_classes=data.num_classes, interpolant=interpolant,
                        teacher=teacher, extras=dict(extras))


def takes_guidance_input(spec: Spec, data: DataSource) -> bool:
    """Whether the backbone takes the guidance scale and interval as an input: the loss trains with
    variable guidance (``[loss.guidance] scale = [lo, hi]``) on labelled data."""
    guidance = getattr(spec.loss.config, "guidance", None)
    return bool(guidance is not None and guidance.variable and data.num_classes)


def build_model(spec: Spec, data: DataSource, registry: Registry) -> FlowMap:
    """The flow map around the spec's backbone (``[model]``): X_{s,t} = x + (t - s) v_{s,t}, or the
    parameterisation the loss asks for (``parameterization = "trigflow"``: sCM's TrigFlow map); the
    backbone takes the guidance input when the loss trains with variable guidance."""
    ctx = data_context(data)
    ctx.guidance_input = takes_guidance_input(spec, data)
    backbone = registry.build("backbone", spec.model.kind, spec.model.config, ctx)
    if spec.init_from is not None:  # the second-time form a student that starts from a teacher trains in
        from fmmkit.core.teacher_init import enable_second_time

        enable_second_time(backbone)
    parameterization = getattr(spec.loss.config, "parameterization", "average_velocity")
    return make_flow_map(backbone, parameterization, getattr(spec.loss.config, "sigma_data", 1.0))


#: Backbone config keys that name an attention backend (a registered component too).
ATTENTION_KEYS = ("attention", "forward_ad_attention")


def spec_components(spec: Spec) -> list[tuple[str, str]]:
    """(kind, name) of every registered component the spec uses, in spec order, without repeats."""
    named = [("dataset", spec.data.kind), ("interpolant", spec.interpolant.kind), ("backbone", spec.model.kind),
             ("loss", spec.loss.kind)]
    named += [("attention_backend", getattr(spec.model.config, key)) for key in ATTENTION_KEYS
              if isinstance(getattr(spec.model.config, key, None), str)]
    if spec.teacher is not None:
        named.append(("teacher", spec.teacher.kind))
    named += [("sampler", c.kind) for c in spec.eval.ode] + [("metric", c.kind) for c in spec.eval.metrics]
    return list(dict.fromkeys(named))
