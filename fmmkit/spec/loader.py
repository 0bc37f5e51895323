"""Reading, validating and resolving specs: TOML -> dict -> typed :class:`Spec` (attrs + cattrs).

Every user mistake becomes a :class:`SpecError` with one line per problem, naming the file, the key
path and the fix. Components are found through the registry, never imported here.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

import attrs
import cattrs

from fmmkit.core.validators import SpecValueError
from fmmkit.registry import Registry, RegistryError, get_registry, plural
from fmmkit.spec.errors import SpecError
from fmmkit.spec.schema import DEFAULT_ODE_SOLVERS, ComponentSpec, Spec
from fmmkit.spec.toml_writer import dumps

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The teacher kind a ``[teacher] run = "RUN_DIR"`` table means.
RUN_TEACHER = "run"


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _strict(kind: type, accepts: tuple[type, ...], label: str) -> Any:
    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {label}, got {value!r} ({_type_name(value)})")
        if not isinstance(value, accepts):
            raise TypeError(f"expected {label}, got {value!r} ({_type_name(value)})")
        return kind(value)

    return hook


def make_converter() -> cattrs.Converter:
    """A cattrs converter that refuses lossy coercions ("3" is not an int, 1 is not a bool)."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict(int, (int,), "an integer"))
    conv.register_structure_hook(float, _strict(float, (int, float), "a number"))
    conv.register_structure_hook(bool, _strict(bool, (bool,), "true or false"))
    conv.register_structure_hook(str, _strict(str, (str,), "a string"))
    return conv


CONVERTER = make_converter()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_keys(data: Any, cls: type, path: str, origin: str, skip: frozenset[str] = frozenset(),
                recurse: bool = True) -> None:
    """Unknown keys (with a did-you-mean) anywhere in nested attrs configs."""
    if not isinstance(data, dict):
        raise SpecError.at(origin, path, f"expected a table, got {data!r} ({_type_name(data)})")
    fields = {f.name: f for f in attrs.fields(attrs.resolve_types(cls)) if not f.metadata.get("internal")}
    for key, value in data.items():
        if key in skip:
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(fields) or '(none)'}"
            raise SpecError.at(origin, _join(path, key), f"unknown key; {hint}")
        ftype = fields[key].type
        if recurse and isinstance(ftype, type) and attrs.has(ftype) and isinstance(value, dict):
            _check_keys(value, ftype, _join(path, key), origin)


def _format(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, SpecValueError):
        return exc.problem
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return f"invalid value ({type(exc).__name__})"


def _structure(data: dict[str, Any], cls: type, path: str, origin: str) -> Any:
    """Structure ``data`` into the attrs class ``cls``; SpecError with key paths on failure."""
    _check_keys(data, cls, path, origin)
    try:
        return CONVERTER.structure(data, cls)
    except SpecValueError as exc:
        raise SpecError.at(origin, _join(path, exc.field), exc.problem) from None
    except cattrs.BaseValidationError as exc:
        problems = []
        for line in cattrs.transform_error(exc, path="$", format_exception=_format):
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
        raise SpecError.at(origin, _join(path, "kind"), f"missing; registered {plural(kind)}: {', '.join(registry.names(kind))}")
    name = table["kind"]
    if not isinstance(name, str):
        raise SpecError.at(origin, _join(path, "kind"), f"expected a string, got {name!r}")
    try:
        entry = registry.get(kind, name)
    except RegistryError as exc:
        raise SpecError.at(origin, _join(path, "kind"), str(exc)) from None
    params = {k: v for k, v in table.items() if k != "kind"}
    return ComponentSpec(kind=name, config=_structure(params, entry.config, path, origin))


def _teacher(table: Any, origin: str, registry: Registry, base_dir: Path | None, check_paths: bool = True) -> ComponentSpec:
    from fmmkit.runs.layout import RUN_MARKERS

    if not isinstance(table, dict):
        raise SpecError.at(origin, "teacher", f"expected a table, got {table!r}")
    if "run" in table and table.get("kind", RUN_TEACHER) == RUN_TEACHER:
        extra = sorted(set(table) - {"run", "kind"})
        if extra:
            raise SpecError.at(origin, f"teacher.{extra[0]}", "unknown key; a run teacher takes only run = \"RUN_DIR\"")
        run = table["run"]
        if not isinstance(run, str):
            raise SpecError.at(origin, "teacher.run", f"expected a string path, got {run!r}")
        path = Path(run).expanduser()
        if not path.is_absolute() and base_dir is not None and not path.exists() and (base_dir / path).exists():
            path = base_dir / path
        missing = [m for m in RUN_MARKERS if not (path / m).is_file()]
        if missing and check_paths:
            raise SpecError.at(
                origin,
                "teacher.run",
                f"no trained run at '{run}' (missing {', '.join(missing)}); train the teacher first "
                "(fmmkit train TEACHER_SPEC --out DIR) and point run at DIR",
            )
        return _component({"kind": RUN_TEACHER, "run": str(path.resolve())}, "teacher", "teacher", origin, registry)
    if "kind" in table:
        return _component(table, "teacher", "teacher", origin, registry)
    raise SpecError.at(origin, "teacher", "needs run = \"RUN_DIR\" (a trained run) or kind = \"...\" (a registered teacher)")


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
            raise SpecError.at(origin, _join(path, name), "expected an array of tables")
        updates[name] = [_component(t, kind, f"{path}.{name}[{i}]", origin, registry) for i, t in enumerate(items)]
    return attrs.evolve(plain, **updates) if updates else plain


def structure_spec(raw: dict[str, Any], origin: str = "<dict>", registry: Registry | None = None,
                   base_dir: Path | None = None, check_paths: bool = True) -> Spec:
    """Validate a raw spec dict into a :class:`Spec` with every default filled in."""
    registry = registry or get_registry()
    fields = {f.name: f for f in attrs.fields(attrs.resolve_types(Spec)) if not f.metadata.get("internal")}
    _check_keys(raw, Spec, "", origin, recurse=False)
    values: dict[str, Any] = {"source": origin}
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
            values[name] = _teacher(raw[name], origin, registry, base_dir, check_paths) if present else None
        elif name == "name":
            if present and not isinstance(raw[name], str):
                raise SpecError.at(origin, "name", f"expected a string, got {raw[name]!r}")
            values[name] = raw.get(name, Path(origin).stem if origin != "<dict>" else "run")
        elif present:
            values[name] = _section(raw[name], field.type, name, origin, registry)
    spec = Spec(**values)
    if not spec.eval.ode:
        spec = attrs.evolve(spec, eval=attrs.evolve(spec.eval, ode=[
            _component(t, "sampler", "eval.ode", origin, registry) for t in DEFAULT_ODE_SOLVERS
        ]))
    _check_cross_references(spec, origin, registry)
    return spec


def _check_cross_references(spec: Spec, origin: str, registry: Registry) -> None:
    loss = registry.get("loss", spec.loss.kind).component
    if getattr(loss, "requires_teacher", False) and spec.teacher is None:
        raise SpecError.at(origin, "teacher", f"loss '{spec.loss.kind}' distills a teacher; add [teacher] with "
                           "run = \"RUN_DIR\" of a trained teacher run")
    for i, metric in enumerate(spec.eval.metrics):
        if metric not in registry.entries["metric"]:
            try:
                registry.get("metric", metric)
            except RegistryError as exc:
                raise SpecError.at(origin, f"eval.metrics[{i}]", str(exc)) from None


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


def read_toml(path: str | Path) -> dict[str, Any]:
    """The dict of a TOML file; SpecError (one line) when it is missing or not valid TOML."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"{path}: no such spec file"])
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
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
        origin, base = str(source), Path(source).parent
        source = read_toml(source)
    return structure_spec(apply_overrides(source, overrides), origin, registry, base)


def _unstructure_component(component: ComponentSpec) -> dict[str, Any]:
    return {"kind": component.kind, **CONVERTER.unstructure(component.config)}


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """The spec as a plain dict with every default filled in (what ``spec show`` prints)."""
    out: dict[str, Any] = {"name": spec.name}
    for field in attrs.fields(Spec):
        value = getattr(spec, field.name)
        if field.metadata.get("internal") or field.name == "name" or value is None:
            continue
        if field.name == "teacher" and value.kind == RUN_TEACHER:
            out[field.name] = {"run": value.config.run}  # as written: a run teacher needs no kind
        elif isinstance(value, ComponentSpec):
            out[field.name] = _unstructure_component(value)
        else:
            table = {}
            for sub in attrs.fields(type(value)):
                item = getattr(value, sub.name)
                if "components" in sub.metadata:
                    table[sub.name] = [_unstructure_component(c) for c in item]
                else:
                    table[sub.name] = CONVERTER.unstructure(item)
            out[field.name] = table
    return out


def spec_to_toml(spec: Spec) -> str:
    """The resolved spec as TOML text; loading it gives the same spec."""
    return dumps(spec_to_dict(spec))
