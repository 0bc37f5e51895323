"""Old import paths of moved modules and names: they keep working for one release, with a
DeprecationWarning naming the new home (the paths go away in fmmkit 0.2).

``MOVED_MODULES`` maps a module that moved whole to its new path: importing the old path gives the new
module itself (one object, so a monkeypatch through either name affects both). ``MOVED_NAMES`` maps a
module that was split up, emptied or turned into a package to {name: module now holding it}; the
names are looked up when first used. Both tables are the one list of what moved (README, "Layout").
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any, Callable

REMOVED_IN = "0.2"

#: old module -> new module (everything in it moved together)
MOVED_MODULES: dict[str, str] = {
    "fmmkit.timesampling": "fmmkit.losses.times",
    "fmmkit.weighting": "fmmkit.losses.weighting",
    "fmmkit.guidance": "fmmkit.losses.guidance",
    "fmmkit.losses._common": "fmmkit.losses.base",
    "fmmkit.derivatives": "fmmkit.core.derivatives",
    "fmmkit.plots": "fmmkit.evaluation.plots",
    "fmmkit.quickstart": "fmmkit.cli.quickstart",
    "fmmkit.data._errors": "fmmkit.data.errors",
    "fmmkit.data._images": "fmmkit.data.images",
    "fmmkit.interpolants._config": "fmmkit.interpolants.config",
    "fmmkit.metrics._digits_classifier": "fmmkit.metrics.digits_classifier",
    "fmmkit.metrics._frechet": "fmmkit.metrics.frechet",
    "fmmkit.nets._conditioning": "fmmkit.nets.conditioning",
}

#: old module -> {public name: module that holds it now, or "module:new_name" for a renamed name}
MOVED_NAMES: dict[str, dict[str, str]] = {
    "fmmkit.runs": {
        **dict.fromkeys(("SPEC_FILE", "WEIGHTS_FILE"), "fmmkit.runs.layout"),
        **dict.fromkeys(("atomic_write_bytes", "atomic_write_text", "save_tensors", "load_weights", "read_json"),
                        "fmmkit.runs.files"),
    },
    "fmmkit.training.build": {"build_model": "fmmkit.spec.build", "build_teacher": "fmmkit.runs.teacher",
                              "resolve_device": "fmmkit.training.distributed"},
    "fmmkit.spec": {"TeacherSpec": "fmmkit.spec.schema:ComponentSpec"},
    "fmmkit.gaussian_config": {"non_empty": "fmmkit.core.validators", "per_coordinate": "fmmkit.exact"},
    "fmmkit.training.trainer": {
        **dict.fromkeys(("train", "resume_run", "train_pipeline", "forward_backward", "synchronise",
                         "nonfinite_problem", "save_step_pictures", "prepare_run_dir", "check_run_dir",
                         "default_run_dir"), "fmmkit.training.loop"),
        "make_compute": "fmmkit.training.compile",
        "TrainingError": "fmmkit.training.errors",
        "RESUMABLE_CHANGES": "fmmkit.training.resume",
        "check_resumable": "fmmkit.training.resume",
        "PICTURES_DIR": "fmmkit.runs.layout",
    },
}

#: modules of MOVED_NAMES that still exist (they call :func:`moved_getattr`); the others are gone
_STILL_THERE = {"fmmkit.runs", "fmmkit.training.build", "fmmkit.spec"}
_VANISHED = set(MOVED_MODULES) | (set(MOVED_NAMES) - _STILL_THERE)


def _warn(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in fmmkit {REMOVED_IN}; use {new}",
                  DeprecationWarning, stacklevel=stacklevel)


def moved_getattr(module: str, names: dict[str, str] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` that resolves the moved names of ``module`` with a DeprecationWarning."""
    table = MOVED_NAMES[module] if names is None else names

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        home, _, new_name = table[name].partition(":")
        new_name = new_name or name
        _warn(f"{module}.{name}", f"{home}.{new_name}", stacklevel=3)
        return getattr(importlib.import_module(home), new_name)

    return __getattr__


class _MovedLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default empty module; exec_module fills or replaces it

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        if name in MOVED_MODULES:
            new = MOVED_MODULES[name]
            _warn(name, new, stacklevel=3)  # the warning points at the importing line
            sys.modules[name] = importlib.import_module(new)  # the import statement returns this
        else:
            module.__getattr__ = moved_getattr(name)  # type: ignore[method-assign]
            module.__all__ = sorted(MOVED_NAMES[name])


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of modules that no longer exist as files."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _VANISHED:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedLoader(), origin="moved (fmmkit.moved)")


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (fmmkit's ``__init__`` calls this)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
