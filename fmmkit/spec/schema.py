"""The typed spec: one attrs class per TOML table.

Component tables (``[data]``, ``[interpolant]``, ``[model]``, ``[loss]``, ``[teacher]``) name a
registered ``kind`` and carry that component's own parameters, validated by its ``Config`` class.
The other tables are fixed sections with the classes below; a section added here is parsed,
validated, defaulted and written to the run's resolved spec with no further code.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from fmmkit.core.validators import SpecValueError, at_least, each, in_range, non_negative, one_of, positive, unit_interval
from fmmkit.moved import moved_getattr

#: Seeds torch, NumPy's SeedSequence and the data streams all accept (non-negative 64-bit integers).
SEED_RANGE = (0, 2**63 - 1)
seed_in_range = in_range(*SEED_RANGE)

#: ``train.threads``: "auto" (the thread governor, :mod:`fmmkit.training.threads`) or a fixed count >= 1
#: (0 is read as "auto", as in specs written before "auto" existed).
ThreadCount = Literal["auto"] | int
#: ``compile.enabled``: "auto" (:mod:`fmmkit.training.autocompile`), or true / false to pin it.
CompileChoice = Literal["auto"] | bool

#: The key of a field's one-line documentation in its attrs metadata; ``fmmkit spec show`` prints it
#: as a comment above the key (see :func:`field_docs`).
DOC = "doc"


def doc(text: str, **metadata: Any) -> dict[str, Any]:
    """attrs field metadata holding the field's documentation (``attrs.field(metadata=doc("..."))``)."""
    return {DOC: text, **metadata}


def field_docs(cls: type) -> dict[str, str]:
    """{key: documentation} of the fields of a spec table class that carry one."""
    return {f.name: f.metadata[DOC] for f in attrs.fields(cls) if DOC in f.metadata}


def _check_threads(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise SpecValueError(attribute.name, f'must be "auto" or a number of threads >= 1, got {value!r}')


def _check_compile(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value != "auto" and not isinstance(value, bool):
        raise SpecValueError(attribute.name, f'must be "auto", true or false, got {value!r}')


@attrs.define(frozen=True)
class ComponentSpec:
    """A registered component: its kind (registry name) and its validated config instance."""

    kind: str
    config: Any


#: the optimisers torch can update in one fused kernel (``fused=True``) on CPU and CUDA
FUSED_OPTIMIZERS = ("adam", "adamw")


@attrs.define(frozen=True)
class OptimConfig:
    """Optimiser (adam, adamw, radam), learning-rate schedule and gradient clipping (0 = off)."""

    name: str = attrs.field(default="adam", validator=one_of(("adam", "adamw", "radam")))
    lr: float = attrs.field(default=1e-3, validator=positive)
    betas: list[float] = attrs.field(factory=lambda: [0.9, 0.999])
    weight_decay: float = attrs.field(default=0.0, validator=non_negative)
    grad_clip: float = attrs.field(default=0.0, validator=non_negative)
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    schedule: str = attrs.field(default="constant", validator=one_of(("constant", "cosine", "linear")))
    #: Adam's epsilon; min_lr_factor: floor of the cosine/linear decay as a fraction of lr.
    eps: float = attrs.field(default=1e-8, validator=positive)
    min_lr_factor: float = attrs.field(default=0.0, validator=unit_interval)
    implementation: Literal["auto", "fused", "foreach", "for_loop"] = attrs.field(
        default="auto", validator=one_of(("auto", "fused", "foreach", "for_loop")), metadata=doc(
            'how the optimiser updates the parameters: "fused" (one kernel per step; adam and adamw on CPU and CUDA), '
            '"foreach" (batched tensor ops), "for_loop" (one parameter at a time); "auto": fused where it applies, '
            'else torch\'s default'))

    @betas.validator
    def _check_betas(self, attribute: attrs.Attribute[Any], value: list[float]) -> None:
        if len(value) != 2 or not all(0 <= b < 1 for b in value):
            raise SpecValueError("betas", f"must be two numbers in [0, 1), got {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.implementation == "fused" and self.name not in FUSED_OPTIMIZERS:
            raise SpecValueError("implementation", f'"fused" applies to {" and ".join(FUSED_OPTIMIZERS)}, not '
                                 f'{self.name}; use "auto" or "foreach"')


@attrs.define(frozen=True)
class TrainConfig:
    """How a run trains: steps, batch, seed, device, threads, precision, parallelism, non-finite policy."""

    steps: int = attrs.field(default=2000, validator=non_negative, metadata=doc("optimiser steps of the run"))
    batch_size: int = attrs.field(default=1024, validator=positive,
                                  metadata=doc("points per optimiser step (the global batch, over all processes)"))
    seed: int = attrs.field(default=0, validator=seed_in_range,
                            metadata=doc("seeds the weights, the data streams and the loss's noise"))
    device: str = attrs.field(default="auto", metadata=doc('"auto" (CUDA when visible, else CPU), "cpu", "cuda", '
                                                           '"cuda:N" or "mps"'))
    log_every: int = attrs.field(default=100, validator=positive,
                                 metadata=doc("steps between two lines of metrics.jsonl"))
    threads: ThreadCount = attrs.field(default="auto", validator=_check_threads, metadata=doc(
        '"auto": as many torch threads as cores other processes leave free, re-checked every 5 s (a "threads" '
        "event in events.jsonl at each change); N: exactly N threads (pin it to reproduce a UNet run bit for bit "
        "under another load)"))
    micro_batches: int = attrs.field(default=0, validator=non_negative, metadata=doc(
        "batch_size splits into this many equal micro-batches over all processes (gradient accumulation = "
        "micro_batches / processes; 0 = one per process); the same value draws the same data and noise "
        "whatever the number of processes"))
    precision: Literal["auto", "float32", "bf16"] = attrs.field(
        default="auto", validator=one_of(("auto", "float32", "bf16")),
        metadata=doc('"auto": bf16 autocast on CUDA with bf16 support, float32 elsewhere; "bf16" falls back to '
                     "float32 off CUDA"))
    parallel: Literal["ddp", "fsdp"] = attrs.field(default="ddp", validator=one_of(("ddp", "fsdp")), metadata=doc(
        'under torchrun: "ddp" (replicated weights, averaged gradients) or "fsdp" (FSDP2 sharded weights)'))
    on_nonfinite: Literal["stop", "skip"] = attrs.field(default="stop", validator=one_of(("stop", "skip")),
                                                        metadata=doc('a non-finite loss or gradient: "stop" the run '
                                                                     'with a message, or "skip" the optimiser step'))
    skip_limit: float = attrs.field(default=0.1, validator=unit_interval, metadata=doc(
        'with on_nonfinite = "skip": the run stops once more than this fraction of steps was skipped'))

    @device.validator
    def _check_device(self, attribute: attrs.Attribute[Any], value: str) -> None:
        if not (value in ("auto", "cpu", "cuda", "mps") or value.startswith("cuda:")):
            raise SpecValueError("device", f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}")

    def __attrs_post_init__(self) -> None:
        m = self.micro_batches
        if m and self.batch_size % m:  # the split over processes is checked when their number is known
            raise SpecValueError("micro_batches", f"{m} micro-batches do not split train.batch_size = "
                                 f"{self.batch_size} points equally; use a divisor of {self.batch_size} (or a batch "
                                 f"size that is a multiple of {m})")

    def max_skipped(self) -> int:
        """The most optimiser steps a run may skip (skip_limit of train.steps, rounded down)."""
        return int(self.skip_limit * self.steps)


@attrs.define(frozen=True)
class SampleConfig:
    """Flow-map step counts drawn for pictures and evaluation; points per picture panel; the ODE panel;
    sampler: the flow-map sampler of the k-step rows ("auto": the loss's own — ``flow_map``, or
    ``consistency`` for losses that learn only X_(s,1) —, or any registered flow-map sampler such as
    ``stochastic_flow_map``)."""

    steps: list[int] = attrs.field(factory=lambda: [1, 2, 4, 8], validator=each(positive))
    sampler: str = "auto"
    num_pictures: int = attrs.field(default=4000, validator=positive)
    picture_solver: str = "midpoint"
    picture_solver_steps: int = attrs.field(default=50, validator=positive)
    grid_power: float = attrs.field(default=1.0, validator=positive, metadata=doc(
        "time grid of the k-step rows, t_i = 1 - (1 - i/k)^grid_power (1: equal jumps; 2: two steps meet at "
        "t = 0.75, nearer the data); any flow-map sampler with a grid_power key takes it, fmmkit sample too"))


@attrs.define(frozen=True)
class EvalConfig:
    """Evaluation: samples per row, metrics and ODE solvers (sampler tables) for the velocity.

    ``metrics`` and ``ode`` are lists of registered components, each a name (its default parameters)
    or a table with ``kind`` and parameters: ``metrics = ["energy_distance", {kind = "sliced_w2",
    projections = 256}]``; empty lists get DEFAULT_METRICS and DEFAULT_ODE_SOLVERS. ``guidance``: the
    scales of the guidance sweep of a run trained with variable guidance (empty: the ends and the
    middle of its training range), each sampled with the reference's labels.
    """

    num_samples: int = attrs.field(default=20000, validator=at_least(2))
    metrics: list[ComponentSpec] = attrs.field(factory=list, metadata={"components": "metric"})
    ode: list[ComponentSpec] = attrs.field(factory=list, metadata={"components": "sampler"})
    seed: int = attrs.field(default=1234, validator=seed_in_range)
    guidance: list[float] = attrs.field(factory=list, validator=each(non_negative))


def _check_decays(instance: Any, attribute: attrs.Attribute[Any], value: list[float]) -> None:
    bad = [d for d in value if not 0 <= d < 1]
    if bad:
        raise SpecValueError(attribute.name, f"each decay must be in [0, 1), got {bad[0]!r}")


@attrs.define(frozen=True)
class EMAConfig:
    """EMAs of the weights: fixed ``decays`` (warmed up, see ``decay_warmup``) and/or EDM ``half_lives`` (in
    training samples, with ramp-up: half-life <= rampup * samples seen); ``sample_with`` picks the weights that sampling and
    evaluation use ("auto": the first EMA, else the raw weights; "raw"; or a label like "ema-0.999")."""

    decays: list[float] = attrs.field(factory=list, validator=_check_decays)
    half_lives: list[float] = attrs.field(factory=list, validator=each(positive))
    rampup: float = attrs.field(default=0.05, validator=non_negative)
    #: fixed decays warm up as beta_k = min(decay, (1 + k) / (10 + k)) at the k-th update (k = 0, 1, ...), so
    #: that the average does not keep a share decay^k of the initial weights (13% after 2000 steps at 0.999)
    decay_warmup: bool = True
    every: int = attrs.field(default=1, validator=positive)
    sample_with: str = "auto"

    def __attrs_post_init__(self) -> None:
        from fmmkit.runs.layout import RAW, ema_labels  # the weight files' names live with the run layout

        labels = ema_labels(self)
        if self.sample_with not in ("auto", RAW, *labels):
            raise SpecValueError("sample_with", f"'{self.sample_with}' is not one of this run's weights; use "
                                 f"\"auto\", \"{RAW}\" or one of {labels}")


@attrs.define(frozen=True)
class CheckpointConfig:
    """Checkpoints in RUN_DIR/checkpoints every N optimiser steps (0: only at the end), the last K
    kept; on_signal: SIGINT/SIGTERM save one before the run exits."""

    every: int = attrs.field(default=1000, validator=non_negative)
    keep: int = attrs.field(default=3, validator=positive)
    on_signal: bool = True


@attrs.define(frozen=True)
class CompileConfig:
    """torch.compile of the training step (loss, JVPs and backward)."""

    enabled: CompileChoice = attrs.field(default="auto", validator=_check_compile, metadata=doc(
        '"auto": time eager steps, compile when the steps left pay for the compile, keep the compiled step only '
        'if it is faster ("compile" events in events.jsonl); true: always compile (a failure is an error); '
        "false: never"))
    backend: str = attrs.field(default="inductor", metadata=doc(
        'torch.compile backend: "inductor" (generated kernels) or another, such as "aot_eager" (trace only, '
        "for debugging)"))
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = attrs.field(
        default="default", validator=one_of(("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")),
        metadata=doc("inductor's mode"))
    fullgraph: bool = attrs.field(default=False, metadata=doc("true: a graph break is an error instead of a "
                                                              "split graph"))


@attrs.define(frozen=True)
class LogConfig:
    """JSON lines always (every train.log_every steps); TensorBoard when installed and enabled;
    sample pictures every N steps (0: only at the end)."""

    tensorboard: bool = True
    pictures_every: int = attrs.field(default=0, validator=non_negative)


DEFAULT_METRICS: list[str] = ["energy_distance", "sliced_w2", "histogram_kl", "in_support"]

DEFAULT_ODE_SOLVERS: list[dict[str, Any]] = [
    {"kind": "euler", "steps": 8},
    {"kind": "euler", "steps": 32},
    {"kind": "midpoint", "steps": 16},
    {"kind": "rk4", "steps": 25},
    {"kind": "dopri5"},
]


@attrs.define(frozen=True)
class Spec:
    """A whole run: what to train on, with which model and loss, and how to train and evaluate it."""

    #: No ``[data]`` table: the ``prior`` (no data), for data-free losses only (FreeFlow).
    data: ComponentSpec = attrs.field(metadata={"component": "dataset", "default_kind": "prior"})
    loss: ComponentSpec = attrs.field(metadata={"component": "loss"})
    interpolant: ComponentSpec = attrs.field(metadata={"component": "interpolant", "default_kind": "linear"})
    model: ComponentSpec = attrs.field(metadata={"component": "backbone", "default_kind": "mlp"})
    #: A frozen teacher velocity: a registered teacher kind; ``[teacher] run = "DIR"`` is the ``run`` teacher.
    teacher: ComponentSpec | None = None
    optim: OptimConfig = attrs.field(factory=OptimConfig)
    train: TrainConfig = attrs.field(factory=TrainConfig)
    sample: SampleConfig = attrs.field(factory=SampleConfig)
    eval: EvalConfig = attrs.field(factory=EvalConfig)
    ema: EMAConfig = attrs.field(factory=EMAConfig)
    checkpoint: CheckpointConfig = attrs.field(factory=CheckpointConfig)
    compile: CompileConfig = attrs.field(factory=CompileConfig)
    log: LogConfig = attrs.field(factory=LogConfig)
    name: str = "run"
    source: str = attrs.field(default="<dict>", metadata={"internal": True})
    #: ``[model] init_from``: "teacher", a run directory or a safetensors file the student backbone starts from
    #: (written inside [model]; see :mod:`fmmkit.core.teacher_init`).
    init_from: str | None = attrs.field(default=None, metadata={"internal": True})


__getattr__ = moved_getattr(__name__)  # former names (fmmkit.moved)
