"""fmmkit's plugin hooks: one per component kind, in the registrar style.

A plugin is a module (or any object) with functions marked ``@fmmkit.hookimpl`` named like the hooks
below; fmmkit finds third-party plugins through the ``fmmkit`` entry-point group of installed
distributions, and registers its own components through the same hooks (``fmmkit.registry.
BUILTIN_PLUGINS``), before any installed plugin. ``docs/plugins.md`` walks through a complete
minimal plugin; ``fmmkit plugins`` lists what is loaded, blocked and skipped.

When the hooks are called
    Once per process, the first time a component is looked up (``fmmkit.registry.get_registry()``:
    any command that reads a spec, ``fmmkit plugins``, the pytest plugin's fixtures). Every hook of
    every plugin is called exactly once, with one argument, ``register``; the return value is ignored.

``register(name, component, *, config=None)``
    Makes ``component`` available under ``name`` for this hook's kind: a spec then selects it with
    ``kind = "name"`` in the kind's table (``[data]``, ``[interpolant]``, ``[model]``, ``[loss]``,
    ``[teacher]``, ``[[eval.ode]]``, ``eval.metrics``, a backbone's ``attention`` key).

    :param name: the spec name; unique per kind across all plugins (two plugins registering one name
        is a clash: ``fmmkit plugins`` lists every clash, other commands refuse to run until one plugin
        is renamed or blocked with ``FMMKIT_BLOCK_PLUGINS``).
    :param component: a class (for every kind but teachers, a subclass of the kind's base in
        :mod:`fmmkit.core`) with

        - ``Config``: an attrs class (frozen is best) whose fields are the keys of the component's TOML
          table, minus ``kind``; field validators raising
          :class:`fmmkit.core.validators.SpecValueError` become one-line spec errors with the key path.
          :class:`fmmkit.core.EmptyConfig` when it takes no parameters.
        - ``build(config, ctx)``: a classmethod returning the built object from a validated config and
          a :class:`fmmkit.core.BuildContext` (data shape, number of classes, the interpolant, the
          teacher); :class:`fmmkit.core.Component` gives the default ``cls(config)``.
        - optionally ``Config.migrate(params) -> (params, notes)``: rewrite keys a former version
          accepted (each note becomes a one-line spec warning).
    :param config: a Config class to use instead of ``component.Config`` (one component class
        registered under several names with different parameters).

    Registration checks each component once: the base class, a ``build``, and a Config whose defaults
    pass their own validators and types. A failure skips that component with one warning line naming
    the plugin and the field (``plugin 'p': default of loss 'x'.scale is invalid: must be > 0, got
    -1.0; loss 'x' is skipped``); a plugin whose hook raises has that hook's components skipped; a
    component whose ``build`` raises later is one error line naming it and its plugin.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("fmmkit")
hookimpl = pluggy.HookimplMarker("fmmkit")


class Register(Protocol):
    """The callback handed to every ``register_*`` hook (see the module docstring)."""

    def __call__(self, name: str, component: Any, *, config: type | None = None) -> None: ...


RegisterFn = Callable[..., None]


@hookspec
def register_interpolants(register: Register) -> None:
    """Register :class:`fmmkit.core.Interpolant` subclasses: I_t = alpha(t) x0 + beta(t) x1 + gamma(t) z.

    A component provides alpha, beta and their derivatives d_alpha, d_beta (and gamma, d_gamma for
    noise; the default gamma is ``noise_scale * sqrt(t (1 - t))``), with noise at t = 0 and data at
    t = 1. ``fmmkit.testing.assert_interpolant_valid`` checks one in a single call.

    :param register: ``register(name, InterpolantClass)``; selected by ``[interpolant] kind = "name"``.
    """


@hookspec
def register_backbones(register: Register) -> None:
    """Register :class:`fmmkit.core.Backbone` subclasses: networks v(x, s, t, y) -> the average velocity.

    ``build(config, ctx)`` reads ``ctx.data_shape`` and ``ctx.num_classes``; fmmkit wraps the backbone
    in a :class:`fmmkit.core.FlowMap`, X_{s,t}(x) = x + (t - s) v_{s,t}(x).

    :param register: ``register(name, BackboneClass)``; selected by ``[model] kind = "name"``.
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register :class:`fmmkit.core.Loss` subclasses: ``loss(model, batch, teacher=, step=) -> LossOutput``.

    Subclass :class:`fmmkit.losses.FlowMapLoss` (with a Config subclassing
    :class:`fmmkit.losses.LossTables`) to get ``[loss.times]``, ``[loss.weighting]``,
    ``[loss.guidance]``, label dropout and the stochastic-interpolant time bounds for free; implement
    ``terms(model, batch, teacher, step) -> list[Term]``. A loss that distils sets
    ``requires_teacher = True``; one that trains only the velocity sets ``trains_flow_map = False``.

    :param register: ``register(name, LossClass)``; selected by ``[loss] kind = "name"``.
    """


@hookspec
def register_samplers(register: Register) -> None:
    """Register :class:`fmmkit.core.Sampler` subclasses: ``sampler(model, x0, y) -> SampleResult``.

    :param register: ``register(name, SamplerClass)``; selected by ``[[eval.ode]] kind = "name"`` and
        ``fmmkit sample --solver name``.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register :class:`fmmkit.core.DataSource` subclasses: ``sample(n, generator) -> Batch`` and ``shape``.

    Draw only from the ``generator`` given (the trainer's data stream), so that runs are reproducible
    and resumable.

    :param register: ``register(name, DataSourceClass)``; selected by ``[data] kind = "name"``.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register :class:`fmmkit.core.Metric` subclasses: ``metric(samples, reference, data) -> float``.

    Raise ValueError for data the metric cannot score (``fmmkit eval`` makes it a one-line spec error).

    :param register: ``register(name, MetricClass)``; selected by ``eval.metrics = ["name"]`` or, with
        parameters, ``eval.metrics = [{kind = "name", key = value}]``.
    """


@hookspec
def register_teachers(register: Register) -> None:
    """Register velocity fields usable as a distillation teacher.

    A teacher component's ``build(config, ctx)`` returns a :class:`fmmkit.core.VelocityField` (an
    ``nn.Module`` is moved to the run's device and put in eval mode); ``ctx.interpolant`` is the run's.
    An optional classmethod ``available(config) -> bool`` says whether its files still exist (then
    ``fmmkit eval`` of a student whose teacher is gone falls back to the student's own ODE).

    :param register: ``register(name, TeacherClass)``; selected by ``[teacher] kind = "name"``.
    """


@hookspec
def register_attention_backends(register: Register) -> None:
    """Register :class:`fmmkit.core.attention.AttentionBackend` subclasses: attention kernels that
    backbones select by name.

    :param register: ``register(name, BackendClass)``; selected by a backbone's ``attention = "name"``
        (and ``forward_ad_attention`` for the derivative passes).
    """
