"""Torch modules from other code: an importable factory, keyword arguments and local weights.

A spec names ``factory = "my_pkg.models:build"`` (a module path, a colon, then an attribute path such
as ``build`` or ``UNet2DModel.from_pretrained``), ``kwargs`` for it, and optionally ``weights``: a local
``.safetensors`` file whose tensors are loaded into the module (strict, with ``weights_prefix``
selecting and stripping a key prefix such as ``"ema."``). Nothing is downloaded.

Pickled checkpoints (``.pt``, ``.pth``, ``.ckpt``, ``.bin``) are refused unless ``allow_pickle = true``:
unpickling runs whatever code the file names, so a checkpoint from elsewhere can execute arbitrary
code on load. With ``allow_pickle = true`` the file is still read with torch's restricted
``weights_only`` unpickler (tensors and plain containers only); nested dicts are flattened to
dotted keys (``{"ema": {"w": T}}`` -> ``"ema.w"``) so ``weights_prefix`` can pick one of them.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from fmmkit.core.errors import UserError

PICKLE_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt", ".bin", ".pkl")


class ModuleLoadError(UserError):
    """A module cannot be built or its weights cannot be loaded; the message names the spec key."""


@attrs.define(frozen=True, kw_only=True, slots=False)
class ModuleSource:
    """factory: "pkg.module:attribute" returning an nn.Module; kwargs: its keyword arguments; weights: a
    local safetensors file (or a pickle with allow_pickle = true) loaded into it, strictly; weights_prefix:
    load only the tensors under this key prefix (removed first), e.g. "ema." or "model."."""

    factory: str
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    weights: str | None = None
    weights_prefix: str = ""
    allow_pickle: bool = False


def import_factory(factory: str, where: str) -> Any:
    """The object ``factory`` names ("pkg.module:attr.path"); ModuleLoadError naming ``where``.factory."""
    module_name, sep, attribute = factory.partition(":")
    if not sep or not module_name or not attribute:
        raise ModuleLoadError(f"{where}.factory: '{factory}' is not \"package.module:function\"; "
                              "write the module path, a colon, then the function or class")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module raising while it imports
        raise ModuleLoadError(f"{where}.factory: cannot import '{module_name}' ({type(exc).__name__}: {exc}); "
                              "install the package that provides it or fix the module path") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ModuleLoadError(f"{where}.factory: '{module_name}' has no attribute '{attribute}'; "
                                  "check the name after the colon")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModuleLoadError(f"{where}.factory: '{factory}' is not callable; name a function or class that builds the module")
    return obj


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Tensor):
            out[name] = value
        elif isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
    return out


def read_weights(path_text: str, where: str, allow_pickle: bool = False, prefix: str = "") -> dict[str, Tensor]:
    """The tensors of a local weights file (safetensors, or a pickle when allowed), under ``prefix``."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ModuleLoadError(f"{where}.weights: no file '{path_text}'; give the path of a local .safetensors file")
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModuleLoadError(
                f"{where}.weights: '{path_text}' is a pickle, and unpickling a file runs the code it names "
                "(a checkpoint from elsewhere can execute anything); convert it to safetensors "
                "(safetensors.torch.save_file(state_dict, 'model.safetensors')) or set allow_pickle = true "
                "if you trust it")
        try:
            tree = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModuleLoadError(
                f"{where}.weights: '{path_text}' cannot be read by torch's weights_only unpickler "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); it stores Python objects besides tensors: "
                "save its state_dict() as safetensors in the environment that made it") from None
        tensors = _flatten(tree) if isinstance(tree, Mapping) else {}
    else:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as exc:
            raise ModuleLoadError(f"{where}.weights: cannot read '{path_text}' as safetensors "
                                  f"({type(exc).__name__}: {exc}); is it damaged or another format?") from None
    if prefix:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not tensors:
            raise ModuleLoadError(f"{where}.weights_prefix: no tensor of '{path_text}' starts with '{prefix}'")
    if not tensors:
        raise ModuleLoadError(f"{where}.weights: '{path_text}' holds no tensors")
    return tensors


def _prefix_hint(expected: list[str], found: list[str]) -> str:
    """'; set weights_prefix = "P"' when the file's keys are the module's under a common prefix P."""
    prefixes: Counter[str] = Counter()
    wanted = set(expected)
    for key in found:
        for i in range(len(key)):
            if key[i] == "." and key[i + 1:] in wanted:
                prefixes[key[: i + 1]] += 1
    if not prefixes:
        return ""
    best, _ = prefixes.most_common(1)[0]
    return f"; the file's keys are the module's under '{best}': set weights_prefix = \"{best}\""


def load_state(module: nn.Module, tensors: dict[str, Tensor], where: str, source: str) -> None:
    """Load ``tensors`` into ``module`` strictly, with a one-line error naming the first mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        hint = _prefix_hint(list(own), list(tensors))
        raise ModuleLoadError(
            f"{where}.weights: '{source}' does not fit the module {where}.factory builds "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}){hint or '; check ' + where + '.kwargs'}")
    for key, value in tensors.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise ModuleLoadError(
                f"{where}.weights: '{key}' is {tuple(value.shape)} in '{source}' but {tuple(own[key].shape)} in the "
                f"module {where}.factory builds; check {where}.kwargs (the architecture) against the weights")
    module.load_state_dict(tensors, strict=True)


def build_module(source: ModuleSource, where: str) -> nn.Module:
    """factory(**kwargs), with ``weights`` loaded when given; ModuleLoadError naming ``where`` keys."""
    factory = import_factory(source.factory, where)
    try:
        module = factory(**source.kwargs)
    except Exception as exc:
        raise ModuleLoadError(f"{where}.kwargs: {source.factory}(**kwargs) raised {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}; fix the keyword arguments") from None
    if not isinstance(module, nn.Module):
        raise ModuleLoadError(f"{where}.factory: '{source.factory}' returned {type(module).__name__}, not a torch.nn.Module")
    if source.weights is not None:
        tensors = read_weights(source.weights, where, source.allow_pickle, source.weights_prefix)
        load_state(module, tensors, where, source.weights)
    return module


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with gradients off (a teacher)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
