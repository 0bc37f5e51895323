"""Checking a component's ``Config`` once, when its plugin registers it (not in the user's spec).

A Config must be an attrs class whose defaults pass their own validators and types, so that every
later problem with a config is the spec's, and said in the spec's terms. With every field defaulted,
``Config()`` must build and survive the spec converter's round trip (unstructure, then structure
with the same strict rules a spec gets); fields without a default (required keys) are skipped and
each default is checked alone.
"""

from __future__ import annotations

from typing import Any

import attrs
import cattrs

from fmmkit.core.validators import SpecValueError
from fmmkit.spec.loader import CONVERTER, _formatter


def _first_error(exc: BaseException) -> tuple[str, str]:
    """(dotted key, problem) of the first leaf of a cattrs validation error."""
    line = cattrs.transform_error(exc, path="$", format_exception=_formatter(""))[0]  # type: ignore[arg-type]
    message, _, where = line.rpartition(" @ ")
    return where.removeprefix("$").lstrip("."), message


def _round_trip(value: Any, kind: Any) -> tuple[str, str] | None:
    try:
        CONVERTER.structure(CONVERTER.unstructure(value), kind)
    except SpecValueError as exc:
        return exc.field, exc.problem
    except cattrs.BaseValidationError as exc:
        return _first_error(exc)
    except (TypeError, ValueError) as exc:
        return "", str(exc)
    return None


def config_problem(cls: Any) -> tuple[str, str] | None:
    """(field, problem) when ``cls`` is not a usable component Config, else None; ``field`` is "" when
    the problem is not one field's (then the problem reads after "Config")."""
    if not (isinstance(cls, type) and attrs.has(cls)):
        return "", "is not an attrs class"
    try:
        fields = attrs.fields(attrs.resolve_types(cls))
    except Exception as exc:  # an annotation naming something that does not exist
        return "", f"has annotations that do not resolve ({type(exc).__name__}: {exc})"
    if all(f.default is not attrs.NOTHING for f in fields):
        try:
            instance = cls()
        except SpecValueError as exc:
            return exc.field, exc.problem
        except Exception as exc:
            return "", f"() fails: {type(exc).__name__}: {exc}"
        found = _round_trip(instance, cls)
        if found is not None and not found[0]:
            return "", f"defaults do not survive a spec round trip: {found[1]}"
        return found
    for f in fields:
        if f.default is attrs.NOTHING:
            continue
        value = f.default.factory() if isinstance(f.default, attrs.Factory) else f.default  # type: ignore[union-attr]
        found = _round_trip(value, f.type)
        if found is not None:
            return f.name if not found[0] else f"{f.name}.{found[0]}", found[1]
        if f.validator is not None:
            try:
                f.validator(None, f, value)
            except SpecValueError as exc:
                return f.name, exc.problem
            except Exception as exc:
                return f.name, f"{type(exc).__name__}: {exc}"
    return None
