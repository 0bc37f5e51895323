"""Reading, validating and resolving specs: TOML -> dict -> typed :class:`Spec` (attrs + cattrs).

Every user mistake becomes a :class:`SpecError` with one line per problem, naming the file, the key
path and the fix. Components are found through the registry, never imported here.
"""

from __future__ import annotations

import difflib
import math
import sys
import typing
import warnings
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.cols import list_structure_factory

from fmmkit.core.errors import EnvironmentProblem
from fmmkit.core.validators import SpecValueError
from fmmkit.registry import Registry, RegistryError, get_registry, plural
from fmmkit.spec.errors import SpecError, SpecWarning
from fmmkit.spec.schema import DEFAULT_METRICS, DEFAULT_ODE_SOLVERS, CompileChoice, ComponentSpec, Spec, ThreadCount, field_docs
from fmmkit.spec.toml_writer import dumps
from fmmkit.moved import moved_getattr

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The teacher kind a ``[teacher] run = "RUN_DIR"`` table means.
RUN_TEACHER = "run"


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


#: TOML integers are 64-bit; Python's TOML reader accepts any size, the spec does not.
INT64 = (-(2**63), 2**63 - 1)


def _strict(kind: type, accepts: tuple[type, ...], label: str) -> Any:
    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {label}, got {value!r} ({_type_name(value)})")
        if not isinstance(value, accepts):
            raise TypeError(f"expected {label}, got {value!r} ({_type_name(value)})")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        if kind is int and not INT64[0] <= value <= INT64[1]:
            raise ValueError(f"must be in [{INT64[0]}, {INT64[1]}] (TOML's 64-bit integers), got {value}")
        return kind(value)

    return hook


def _is_list(type_: Any) -> bool:
    return type_ is list or typing.get_origin(type_) is list


def _list_factory(type_: Any, converter: cattrs.Converter) -> Any:
    """Lists as cattrs structures them, but only from arrays: a string is not a list of characters."""
    structure = list_structure_factory(type_, converter)

    def hook(value: Any, cl: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected an array, got {value!r} ({_type_name(value)})")
        return structure(value, cl)

    return hook


def make_converter() -> cattrs.Converter:
    """A cattrs converter that refuses lossy coercions ("3" is not an int, 1 is not a bool, "0.9" is
    not a list, inf is not a usable number)."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict(int, (int,), "an integer"))
    conv.register_structure_hook(float, _strict(float, (int, float), "a number"))
    conv.register_structure_hook(bool, _strict(bool, (bool,), "true or false"))
    conv.register_structure_hook(str, _strict(str, (str,), "a string"))
    conv.register_structure_hook_factory(_is_list, _list_factory)
    conv.register_structure_hook(float | list[float], _number_or_range)
    conv.register_structure_hook_factory(_is_literal, _literal_factory)
    conv.register_structure_hook(ThreadCount, _auto_or(int, "an integer", '"auto" or an integer'))
    conv.register_structure_hook(CompileChoice, _auto_or(bool, "true or false", '"auto", true or false'))
    return conv


def _is_literal(type_: Any) -> bool:
    return typing.get_origin(type_) is typing.Literal


def _literal_factory(type_: Any, converter: cattrs.Converter) -> Any:
    """A Literal of strings is read as a string; the field's validator names the choices."""
    return _strict(str, (str,), "a string")


def _auto_or(kind: type, label: str, choices: str) -> Any:
    """"auto", or a value of ``kind`` (``threads = "auto"`` or ``threads = 2``)."""
    strict = _strict(kind, (kind,), label)

    def hook(value: Any, _: Any) -> Any:
        if value == "auto":
            return value
        try:
            return strict(value, kind)
        except TypeError:
            raise TypeError(f"expected {choices}, got {value!r} ({_type_name(value)})") from None

    return hook


def _number_or_range(value: Any, _: Any) -> float | list[float]:
    """A number, or an array of numbers (``[loss.guidance] scale = 2.0`` or ``scale = [1.0, 4.0]``)."""
    number = _strict(float, (int, float), "a number")
    if isinstance(value, list):
        return [number(v, float) for v in value]
    try:
        return number(value, float)
    except TypeError:
        raise TypeError(f"expected a number or an array of numbers, got {value!r} ({_type_name(value)})") from None


CONVERTER = make_converter()


def _component_passthrough(value: Any, _: Any) -> ComponentSpec:
    """Nested component tables are structured (through the registry) before cattrs sees them."""
    if not isinstance(value, ComponentSpec):
        raise TypeError(f"expected a table with kind = \"...\", got {value!r}")
    return value


CONVERTER.register_structure_hook(ComponentSpec, _component_passthrough)
CONVERTER.register_unstructure_hook(ComponentSpec, lambda c: {"kind": c.kind, **CONVERTER.unstructure(c.config)})


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_keys(data: Any, cls: type, path: str, origin: str, skip: frozenset[str] = frozenset(),
                recurse: bool = True, also: tuple[str, ...] = ()) -> None:
    """Unknown keys (with a did-you-mean among the fields and ``also``) anywhere in nested attrs configs."""
    if not isinstance(data, dict):
        raise SpecError.at(origin, path, f"expected a table, got {data!r} ({_type_name(data)})")
    fields = {f.name: f for f in attrs.fields(attrs.resolve_types(cls)) if not f.metadata.get("internal")}
    for key, value in data.items():
        if key in skip:
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, [*fields, *also], n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(fields) or '(none)'}"
            raise SpecError.at(origin, _join(path, key), f"unknown key; {hint}")
        ftype = fields[key].type
        if recurse and isinstance(ftype, type) and attrs.has(ftype) and isinstance(value, dict):
            _check_keys(value, ftype, _join(path, key), origin)


def _formatter(owner: str) -> Any:
    def format_exception(exc: BaseException, _type: Any) -> str:
        if isinstance(exc, SpecValueError):
            return exc.problem
        if isinstance(exc, KeyError):  # cattrs: a field without a default is absent
            return f"missing (required by {owner})" if owner else "missing (required)"
        if isinstance(exc, (TypeError, ValueError)) and str(exc):
            return str(exc)
        return f"invalid value ({type(exc).__name__})"

    return format_exception


def _structure(data: dict[str, Any], cls: type, path: str, origin: str, owner: str = "") -> Any:
    """Structure ``data`` into the attrs class ``cls``; SpecError with key paths on failure.
    ``owner`` ("dataset 'npy'") names the component in messages about missing keys."""
    _check_keys(data, cls, path, origin, also=("kind",) if owner else ())
    try:
        return CONVERTER.structure(data, cls)
    except SpecValueError as exc:
        raise SpecError.at(origin, _join(path, exc.field), exc.problem) from None
    except cattrs.BaseValidationError as exc:
        problems = []
        for line in cattrs.transform_error(exc, path="$", format_exception=_formatter(owner)):
            message, _, where = line.rpartition(" @ ")
            key = where.removeprefix("$").lstrip(".")
            key = _join(path, key) if key else path
            leaf = _leaf_value_error(exc)
            if leaf is not None and message == leaf.problem:
                key = _join(key, leaf.field)
            problems.append(f"{origin}: {key}: {message}" if key else f"{origin}: {message}")
        raise SpecError(problems) from None


def _leaf_value_error(exc: BaseException) -> SpecValueError | None:
    if isinstance(exc, SpecValueError):
        return exc
    for sub in getattr(exc, "exceptions", ()):
        found = _leaf_value_error(sub)
        if found is not None:
            return found
    return None


def _component(table: Any, kind: str, path: str, origin: str, registry: Registry) -> ComponentSpec:
    if not isinstance(table, dict):
        raise SpecError.at(origin, path, f"expected a table with kind = \"...\", got {table!r}")
    if "kind" not in table:
        misspelt = [k for k in table if difflib.get_close_matches(k, ["kind"], n=1)]
        if misspelt:
            raise SpecError.at(origin, _join(path, misspelt[0]), "unknown key; did you mean 'kind'?")
        raise SpecError.at(origin, _join(path, "kind"), f"missing; registered {plural(kind)}: {', '.join(registry.names(kind))}")
    name = table["kind"]
    if not isinstance(name, str):
        raise SpecError.at(origin, _join(path, "kind"), f"expected a string, got {name!r}")
    try:
        entry = registry.get(kind, name)
    except RegistryError as exc:
        raise SpecError.at(origin, _join(path, "kind"), str(exc)) from None
    params = {k: v for k, v in table.items() if k != "kind"}
    migrate = getattr(entry.config, "migrate", None)
    if callable(migrate):  # a component's former keys, rewritten by the component itself
        params, notes = migrate(params)
        for note in notes:
            warnings.warn(f"{origin}: {_join(path, note)}", SpecWarning, stacklevel=2)
    for field in attrs.fields(attrs.resolve_types(entry.config)) if attrs.has(entry.config) else ():
        nested = field.metadata.get("component")  # a component table inside a component, e.g. [data.source]
        if nested and field.name in params:
            params[field.name] = _component(params[field.name], nested, _join(path, field.name), origin, registry)
    return ComponentSpec(kind=name, config=_structure(params, entry.config, path, origin, f"{kind} '{name}'"))


def structure_component(table: dict[str, Any], kind: str, path: str, origin: str = "<dict>",
                        registry: Registry | None = None) -> ComponentSpec:
    """A component table ``{"kind": NAME, ...}`` of ``kind`` ("backbone", "dataset", ...) as a validated
    :class:`ComponentSpec`; SpecError naming ``origin`` and the key ``path`` on a mistake."""
    return _component(table, kind, path, origin, registry or get_registry())


def _teacher(table: Any, origin: str, registry: Registry, base_dir: Path | None, check_paths: bool = True) -> ComponentSpec:
    if not isinstance(table, dict):
        raise SpecError.at(origin, "teacher", f"expected a table, got {table!r}")
    if "run" in table and table.get("kind", RUN_TEACHER) == RUN_TEACHER:
        extra = sorted(set(table) - {"run", "kind", "guide_run", "guide_weight"})
        if extra:
            raise SpecError.at(origin, f"teacher.{extra[0]}", "unknown key; a run teacher takes run = \"RUN_DIR\" "
                               "(and guide_run = \"WEAK_RUN_DIR\", guide_weight = w for autoguidance)")
        resolved = {key: _run_path(table[key], f"teacher.{key}", origin, base_dir, check_paths)
                    for key in ("run", "guide_run") if key in table}
        params = {**table, **resolved, "kind": RUN_TEACHER}
        return _component(params, "teacher", "teacher", origin, registry)
    if "kind" in table:
        return _component(table, "teacher", "teacher", origin, registry)
    raise SpecError.at(origin, "teacher", "needs run = \"RUN_DIR\" (a trained run) or kind = \"...\" (a registered teacher)")


def _run_path(run: Any, key: str, origin: str, base_dir: Path | None, check_paths: bool) -> str:
    """A run directory named at ``key``, resolved against the spec's folder and checked to hold a trained run."""
    from fmmkit.runs.layout import missing_run_files

    if not isinstance(run, str):
        raise SpecError.at(origin, key, f"expected a string path, got {run!r}")
    path = Path(run).expanduser()
    if not path.is_absolute() and base_dir is not None and not path.exists() and (base_dir / path).exists():
        path = base_dir / path
    missing = missing_run_files(path)
    if missing and check_paths:
        raise SpecError.at(origin, key, f"no trained run at '{run}' (missing {', '.join(missing)}); train the teacher "
                           "first (fmmkit train TEACHER_SPEC --out DIR) and point run at DIR")
    return str(path.resolve())


def _section(table: Any, cls: type, path: str, origin: str, registry: Registry) -> Any:
    if not isinstance(table, dict):
        raise SpecError.at(origin, path, f"expected a table, got {table!r} ({_type_name(table)})")
    lists = {f.name: f.metadata["components"] for f in attrs.fields(cls) if "components" in f.metadata}
    _check_keys(table, cls, path, origin, skip=frozenset(lists))
    plain = _structure({k: v for k, v in table.items() if k not in lists}, cls, path, origin)
    updates = {}
    for name, kind in lists.items():
        if name not in table:
            continue
        items = table[name]
        if not isinstance(items, list):
            raise SpecError.at(origin, _join(path, name), f"expected an array of {kind} names or tables")
        updates[name] = _component_list(items, kind, _join(path, name), origin, registry)
    return attrs.evolve(plain, **updates) if updates else plain


def _component_list(items: list[Any], kind: str, path: str, origin: str, registry: Registry) -> list[ComponentSpec]:
    """Each item a name (its defaults) or a table with kind; a kind listed twice is refused."""
    out: list[ComponentSpec] = []
    for i, item in enumerate(items):
        component = _component({"kind": item} if isinstance(item, str) else item, kind, f"{path}[{i}]", origin, registry)
        if kind == "metric" and any(c.kind == component.kind for c in out):
            raise SpecError.at(origin, f"{path}[{i}]", f"metric '{component.kind}' is listed twice; give each metric once")
        out.append(component)
    return out


def _teacher_hook(teacher: ComponentSpec | None, hook: str, registry: Registry) -> Any:
    """What the teacher's component says through an optional classmethod ``hook(config)`` (None without one)."""
    if teacher is None:
        return None
    method = getattr(registry.get("teacher", teacher.kind).component, hook, None)
    return method(teacher.config) if method is not None else None


def _init_from(value: Any, teacher: ComponentSpec | None, origin: str, base_dir: Path | None, check_paths: bool) -> str:
    """``[model] init_from``: "teacher", or a run directory / safetensors file (resolved like teacher.run)."""
    from fmmkit.runs.layout import RUN_MARKERS, missing_run_files

    key = "model.init_from"
    if not isinstance(value, str):
        raise SpecError.at(origin, key, f"expected \"teacher\", a run directory or a .safetensors file, got {value!r}")
    if value == "teacher":
        if teacher is None:
            raise SpecError.at(origin, key, "\"teacher\" needs a [teacher] table; add one, or give a run directory "
                                            "or a .safetensors file")
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None and not path.exists() and (base_dir / path).exists():
        path = base_dir / path
    if check_paths:
        if path.is_dir() and missing_run_files(path):
            raise SpecError.at(origin, key, f"'{value}' is not a trained run (no {', '.join(RUN_MARKERS)})")
        if not path.is_dir() and (not path.is_file() or path.suffix != ".safetensors"):
            raise SpecError.at(origin, key, f"no run directory or .safetensors file at '{value}'; give \"teacher\", a "
                                            "run directory or a local .safetensors file")
    return str(path.resolve())


def _student_tables(raw: dict[str, Any], teacher: ComponentSpec | None, origin: str, registry: Registry,
                    base_dir: Path | None, check_paths: bool) -> tuple[dict[str, Any], str | None]:
    """``raw`` with the tables a teacher implies, and ``[model] init_from``:

    - no [interpolant]: the one of the teacher's process (a converted teacher's ``interpolant_kind``); a
      different one named is refused, since the student must train on the teacher's marginals;
    - ``init_from = "teacher"`` with no [model] kind: the teacher's architecture (``student_model``).
    """
    raw = dict(raw)
    required = _teacher_hook(teacher, "interpolant_kind", registry)
    if required is not None:
        table = raw.get("interpolant")
        if table is None:
            raw["interpolant"] = {"kind": required}
        elif isinstance(table, dict) and (table.get("kind", "linear") != required or table.get("noise", 0.0) != 0.0):
            assert teacher is not None
            raise SpecError.at(origin, "interpolant.kind", f"the {teacher.kind} teacher's process is fmmkit's "
                               f"'{required}' interpolant (noise = 0), and the student must train on its marginals; "
                               f"set kind = \"{required}\" or remove [interpolant]")
    model = raw.get("model")
    if not isinstance(model, dict) or "init_from" not in model:
        return raw, None
    model = dict(model)
    init_from = _init_from(model.pop("init_from"), teacher, origin, base_dir, check_paths)
    if init_from == "teacher" and "kind" not in model:
        derived = _teacher_hook(teacher, "student_model", registry)
        if derived is None:
            assert teacher is not None
            raise SpecError.at(origin, "model.kind", f"a student cannot take its architecture from a '{teacher.kind}' "
                               "teacher; give [model] a kind and sizes")
        model = {**derived, **model}
    raw["model"] = model
    return raw, init_from


def structure_spec(raw: dict[str, Any], origin: str = "<dict>", registry: Registry | None = None,
                   base_dir: Path | None = None, check_paths: bool = True) -> Spec:
    """Validate a raw spec dict into a :class:`Spec` with every default filled in."""
    registry = registry or get_registry()
    fields = {f.name: f for f in attrs.fields(attrs.resolve_types(Spec)) if not f.metadata.get("internal")}
    _check_keys(raw, Spec, "", origin, recurse=False)
    values: dict[str, Any] = {"source": origin}
    teacher = _teacher(raw["teacher"], origin, registry, base_dir, check_paths) if "teacher" in raw else None
    raw, values["init_from"] = _student_tables(raw, teacher, origin, registry, base_dir, check_paths)
    for name, field in fields.items():
        present = name in raw
        if "component" in field.metadata:
            kind = field.metadata["component"]
            if not present and "default_kind" not in field.metadata:
                raise SpecError.at(origin, name, f"missing table [{name}]; add it with kind = one of: "
                                   f"{', '.join(registry.names(kind))}")
            table = raw.get(name, {"kind": field.metadata.get("default_kind")})
            if isinstance(table, dict) and "kind" not in table and "default_kind" in field.metadata:
                table = {"kind": field.metadata["default_kind"], **table}
            values[name] = _component(table, kind, name, origin, registry)
        elif name == "teacher":
            values[name] = teacher
        elif name == "name":
            if present and not isinstance(raw[name], str):
                raise SpecError.at(origin, "name", f"expected a string, got {raw[name]!r}")
            values[name] = raw.get(name, Path(origin).stem if origin != "<dict>" else "run")
        elif present:
            values[name] = _section(raw[name], field.type, name, origin, registry)
    spec = Spec(**values)
    defaults = {"ode": (spec.eval.ode, DEFAULT_ODE_SOLVERS, "sampler"), "metrics": (spec.eval.metrics, DEFAULT_METRICS, "metric")}
    filled = {key: _component_list(items, kind, f"eval.{key}", origin, registry)
              for key, (given, items, kind) in defaults.items() if not given}
    if filled:
        spec = attrs.evolve(spec, eval=attrs.evolve(spec.eval, **filled))
    _check_cross_references(spec, origin, registry, data_given="data" in raw)
    return spec


def _check_cross_references(spec: Spec, origin: str, registry: Registry, data_given: bool = True) -> None:
    loss = registry.get("loss", spec.loss.kind).component
    if getattr(loss, "needs_data", True) and not registry.get("dataset", spec.data.kind).component.holds_data:
        datasets = ", ".join(n for n in registry.names("dataset") if registry.get("dataset", n).component.holds_data)
        free = ", ".join(n for n in registry.names("loss") if not getattr(registry.get("loss", n).component, "needs_data", True))
        where = "missing table [data]" if not data_given else f"'{spec.data.kind}' holds no data"
        raise SpecError.at(origin, "data", f"{where}, but loss '{spec.loss.kind}' trains on data: add [data] with "
                           f"kind = one of: {datasets} (only data-free losses run without: {free})")
    if getattr(loss, "requires_teacher", False) and spec.teacher is None:
        raise SpecError.at(origin, "teacher", f"loss '{spec.loss.kind}' distills a teacher; add [teacher] with "
                           "run = \"RUN_DIR\" of a trained teacher run")
    if spec.sample.sampler != "auto":
        try:
            sampler = registry.get("sampler", spec.sample.sampler).component
        except RegistryError as exc:
            raise SpecError.at(origin, "sample.sampler", str(exc)) from None
        if not getattr(sampler, "uses_flow_map", False):
            raise SpecError.at(origin, "sample.sampler", f"'{spec.sample.sampler}' integrates the velocity; name a "
                               "flow-map sampler (flow_map, consistency, stochastic_flow_map) or \"auto\"")


def override_for(key: str, overrides: list[str] | tuple[str, ...] | list[tuple[str, str]]) -> str | None:
    """The last ``--set`` (KEY.PATH=VALUE) that gave ``key``, a key inside it, or a key of the table ``key``
    names (a memory check blames ``model`` for ``--set model.width=...``); None when no --set did."""
    for text in reversed(overrides):
        set_key = ".".join(k.strip() for k in text.partition("=")[0].split("."))
        if key == set_key or key.startswith((f"{set_key}.", f"{set_key}[")) or set_key.startswith(f"{key}."):
            return text
    return None


def attribute_to_overrides(exc: SpecError, origin: str, overrides: list[str] | tuple[str, ...]) -> SpecError:
    """Problems at a key that a ``--set`` gave (:func:`override_for`) are reported against that --set, not
    the spec file."""
    problems = []
    prefix = f"{origin}: "
    for problem in exc.problems:
        if problem.startswith(prefix):
            where = problem[len(prefix):].split(": ", 1)[0]
            text = override_for(where, overrides)
            if text is not None:
                problem = f"--set {text}: {problem[len(prefix):]}"
        problems.append(problem)
    return SpecError(problems)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], value parsed as a TOML value, else the raw string)."""
    if "=" not in text:
        raise SpecError([f"--set {text}: expected KEY.PATH=VALUE, e.g. --set train.steps=500"])
    key, _, value_text = text.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not all(keys):
        raise SpecError([f"--set {text}: empty key in '{key}'"])
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``raw`` with each KEY.PATH=VALUE override set (tables created as needed)."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for i, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise SpecError([f"--set {text}: '{'.'.join(keys[: i + 1])}' is a value, not a table"])
            node = child
        node[keys[-1]] = value
    return out


#: The UTF-8 byte-order mark some editors put at the start of a file (TOML does not allow it).
UTF8_BOM = b"\xef\xbb\xbf"


def read_toml(path: str | Path) -> dict[str, Any]:
    """The dict of a TOML file; SpecError (one line) when it is missing or not valid TOML."""
    path = Path(path)
    if path.is_dir():
        raise SpecError([f"{path}: is a directory, not a spec file; give the path of a .toml file"])
    if not path.is_file():
        raise SpecError([f"{path}: no such spec file"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EnvironmentProblem(f"{path}: cannot read the spec ({exc.strerror or exc})") from None
    if data.startswith(UTF8_BOM):
        raise SpecError([f"{path}: starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without a BOM"])
    try:
        return tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([f"{path}: invalid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise SpecError([f"{path}: not a UTF-8 text file"]) from None


def load_spec(source: str | Path | dict[str, Any] | Spec, overrides: list[str] | tuple[str, ...] = (),
              registry: Registry | None = None) -> Spec:
    """A validated :class:`Spec` from a TOML path, a raw dict or a Spec, with overrides applied."""
    if isinstance(source, Spec):
        if not overrides:
            return source
        source, origin, base = spec_to_dict(source), source.source, None
    elif isinstance(source, dict):
        origin, base = "<dict>", None
    else:
        from fmmkit.spec.builtin import resolve_spec_source

        path = resolve_spec_source(source)
        origin, base = str(path), path.parent
        source = read_toml(path)
    try:
        return structure_spec(apply_overrides(source, overrides), origin, registry, base)
    except SpecError as exc:
        raise attribute_to_overrides(exc, origin, overrides) from None


def _unstructure_component(component: ComponentSpec) -> dict[str, Any]:
    return CONVERTER.unstructure(component)


def _unstructure_listed(component: ComponentSpec, kind: str) -> Any:
    """A metric with its default parameters is written as its bare name (as a spec would say it)."""
    table = _unstructure_component(component)
    try:
        default = type(component.config)()
    except TypeError:  # a config with required keys
        return table
    return component.kind if kind == "metric" and component.config == default else table


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """The spec as a plain dict with every default filled in (what ``spec show`` prints)."""
    out: dict[str, Any] = {"name": spec.name}
    for field in attrs.fields(Spec):
        value = getattr(spec, field.name)
        if field.metadata.get("internal") or field.name == "name" or value is None:
            continue
        if field.name == "teacher" and value.kind == RUN_TEACHER:
            out[field.name] = {"run": value.config.run}  # as written: a run teacher needs no kind
            if value.config.guide_run:
                out[field.name].update(guide_run=value.config.guide_run, guide_weight=value.config.guide_weight)
        elif isinstance(value, ComponentSpec):
            out[field.name] = _unstructure_component(value)
            if field.name == "model" and spec.init_from is not None:
                out[field.name]["init_from"] = spec.init_from
        else:
            table = {}
            for sub in attrs.fields(type(value)):
                item = getattr(value, sub.name)
                if "components" in sub.metadata:
                    table[sub.name] = [_unstructure_listed(c, sub.metadata["components"]) for c in item]
                else:
                    table[sub.name] = CONVERTER.unstructure(item)
            out[field.name] = table
    return out


def spec_docs() -> dict[str, dict[str, str]]:
    """{section: {key: documentation}} of the fixed sections' documented fields (schema.field_docs)."""
    return {f.name: field_docs(f.type) for f in attrs.fields(attrs.resolve_types(Spec))
            if isinstance(f.type, type) and attrs.has(f.type) and field_docs(f.type)}


def spec_to_toml(spec: Spec, comments: bool = False) -> str:
    """The resolved spec as TOML text; loading it gives the same spec. ``comments``: each documented
    key with its documentation above it (what ``fmmkit spec show`` prints)."""
    return dumps(spec_to_dict(spec), spec_docs() if comments else None)


__getattr__ = moved_getattr(__name__)  # former names (fmmkit.moved)
