"""Old import paths of moved modules and names keep working for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys
import warnings

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


def test_the_warning_points_at_the_importing_line() -> None:
    code = compile("from fmmkit.timesampling import TimeSampling\nfrom fmmkit.training.trainer import train\n"
                   "import fmmkit.training.trainer as t\nt.train\n", "user_code.py", "exec")
    _forget("fmmkit.timesampling")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(code, {})
    assert [(w.filename, w.lineno, str(w.message).split(" is deprecated")[0]) for w in caught] == [
        ("user_code.py", 1, "fmmkit.timesampling"), ("user_code.py", 2, "fmmkit.training.trainer.train"),
        ("user_code.py", 4, "fmmkit.training.trainer.train")]


def test_unknown_names_of_an_old_module_are_attribute_errors() -> None:
    import fmmkit.training.trainer as old

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        old.nope  # noqa: B018


def test_the_former_loss_level_diagonal_fraction_key_still_loads_with_a_spec_warning() -> None:
    import attrs

    from fmmkit.spec import SpecWarning, load_spec

    old = {"data": {"kind": "checkerboard"},
           "loss": {"kind": "lagrangian_self_distillation", "diagonal_fraction": 0.5, "times": {"diagonal_fraction": 0.2}}}
    with pytest.warns(SpecWarning, match=r"^<dict>: loss\.diagonal_fraction is deprecated; it is now \[loss\.times\] "
                                         r"diagonal_fraction, the one key for the share of the batch on s = t$"):
        spec = load_spec(old)
    # the two keys used to stack: eta on the diagonal, then 0.2 of the remaining pairs on s = t too
    assert spec.loss.config.times.diagonal_fraction == pytest.approx(0.5 + 0.5 * 0.2)
    assert "diagonal_fraction" not in attrs.fields_dict(type(spec.loss.config))


def test_time_order_any_is_both_with_a_warning() -> None:
    from fmmkit.testing import time_triples

    with pytest.warns(DeprecationWarning, match='time order "any" is deprecated .* use "both"'):
        strategy = time_triples(order="any")
    assert strategy is not None
