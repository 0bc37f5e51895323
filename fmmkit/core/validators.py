"""attrs validators for component configs whose failures read well in a spec error.

Each raises :class:`SpecValueError` naming the field; the spec layer prefixes the TOML key path.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import attrs


class SpecValueError(ValueError):
    """A config value is out of its allowed range: ``field`` names the key, ``problem`` says why."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _check(predicate: Callable[[Any], bool], requirement: str) -> Validator:
    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not predicate(value):
            raise SpecValueError(attribute.name, f"must be {requirement}, got {value!r}")

    return validate


positive = _check(lambda v: v > 0, "> 0")
non_negative = _check(lambda v: v >= 0, ">= 0")
unit_interval = _check(lambda v: 0 <= v <= 1, "in [0, 1]")


def at_least(bound: float) -> Validator:
    """value >= bound."""
    return _check(lambda v: v >= bound, f">= {bound}")


def in_range(lo: float, hi: float) -> Validator:
    """lo <= value <= hi."""
    return _check(lambda v: lo <= v <= hi, f"in [{lo}, {hi}]")


def one_of(choices: Collection[Any]) -> Validator:
    """value in choices."""
    return _check(lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


def non_empty(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """The list has at least one entry."""
    if len(value) == 0:
        raise SpecValueError(attribute.name, "must have at least one entry")


def each(validator: Validator) -> Validator:
    """Apply ``validator`` to every element of a list value."""

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        for item in value or ():
            validator(instance, attribute, item)

    return validate
