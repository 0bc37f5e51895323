"""Old import paths of moved modules and names keep working for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from fmmkit.moved import MOVED_MODULES, MOVED_NAMES


def _forget(name: str) -> None:
    sys.modules.pop(name, None)
    parent, _, child = name.rpartition(".")
    if parent in sys.modules and child in vars(sys.modules[parent]):
        delattr(sys.modules[parent], child)


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_module_path_is_the_new_module_with_a_warning(old: str) -> None:
    new = importlib.import_module(MOVED_MODULES[old])
    _forget(old)
    with pytest.warns(DeprecationWarning, match=rf"^{old} is deprecated and will be removed in fmmkit 0\.2; use "
                                                rf"{MOVED_MODULES[old]}$"):
        module = importlib.import_module(old)
    assert module is new


@pytest.mark.parametrize(("old", "name"), sorted((m, n) for m, names in MOVED_NAMES.items() for n in names))
def test_old_name_resolves_to_its_new_home_with_a_warning(old: str, name: str) -> None:
    home, _, new_name = MOVED_NAMES[old][name].partition(":")
    expected = getattr(importlib.import_module(home), new_name or name)
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"^{old}\.{name} is deprecated .* use {home}\.{new_name or name}$"):
        assert getattr(module, name) is expected


def test_the_warning_points_at_the_importing_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "user_code.py"
    script.write_text("import warnings\nwarnings.simplefilter('always')\nfrom fmmkit.timesampling import TimeSampling\n"
                      "from fmmkit.training.trainer import train\nimport fmmkit.training.trainer as t\nt.train\n")
    err = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stderr
    assert f"{script}:3: DeprecationWarning: fmmkit.timesampling is deprecated" in err
    assert f"{script}:4: DeprecationWarning: fmmkit.training.trainer.train is deprecated" in err
    assert f"{script}:6: DeprecationWarning: fmmkit.training.trainer.train is deprecated" in err


def test_unknown_names_of_an_old_module_are_attribute_errors() -> None:
    import fmmkit.training.trainer as old

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        old.nope  # noqa: B018
