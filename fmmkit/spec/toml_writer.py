"""A small TOML writer for resolved specs (nested tables, arrays of tables, scalars, arrays, inline tables)."""

from __future__ import annotations

import json
import math
from typing import Any


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, inside a mixed array such as metrics = ["a", {kind = "b"}]
        return "{" + ", ".join(f"{_key(k)} = {_scalar(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else json.dumps(key)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


#: {table path: {key: comment}}: comments written above keys ("" is the top-level table)
Comments = dict[str, dict[str, str]]


def _comment(text: str, width: int = 110) -> list[str]:
    """``text`` as ``# ...`` lines of at most ``width`` characters."""
    import textwrap

    return [f"# {line}" for line in textwrap.wrap(text, width - 2)]


def _write_table(lines: list[str], prefix: str, table: dict[str, Any], comments: Comments | None = None) -> None:
    simple = {k: v for k, v in table.items() if v is not None and not isinstance(v, dict) and not _is_table_array(v)}
    notes = (comments or {}).get(prefix, {})
    for key, value in simple.items():
        if key in notes:
            lines.extend(_comment(notes[key]))
        lines.append(f"{key} = {_scalar(value)}")
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            lines.append("")
            lines.append(f"[{name}]")
            _write_table(lines, name, value, comments)
        elif _is_table_array(value):
            for item in value:
                lines.append("")
                lines.append(f"[[{name}]]")
                _write_table(lines, name, item, comments)


def dumps(data: dict[str, Any], comments: Comments | None = None) -> str:
    """TOML text for a dict of scalars, lists and nested dicts (None values are left out), with
    ``comments[table][key]`` as ``#`` lines above its key."""
    lines: list[str] = []
    _write_table(lines, "", data, comments)
    return "\n".join(lines).lstrip("\n") + "\n"
