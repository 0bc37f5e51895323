"""TOML specs: typed, validated run descriptions (attrs + cattrs)."""

from fmmkit.spec.errors import SpecError
from fmmkit.spec.loader import load_spec, spec_to_dict, spec_to_toml
from fmmkit.spec.schema import ComponentSpec, Spec

__all__ = ["ComponentSpec", "Spec", "SpecError", "load_spec", "spec_to_dict", "spec_to_toml"]

from fmmkit.moved import moved_getattr

__getattr__ = moved_getattr(__name__)
