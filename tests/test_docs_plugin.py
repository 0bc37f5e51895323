"""docs/plugins.md's complete minimal plugin, run as written: its module registers, and its spec trains."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from fmmkit.registry import load_registry
from fmmkit.spec import load_spec
from fmmkit.training.loop import train

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_documented_plugin_registers_and_its_spec_trains(tmp_path: Path) -> None:
    (tmp_path / "square_plugin.py").write_text(_blocks("python")[0])
    spec = importlib.util.spec_from_file_location("square_plugin", tmp_path / "square_plugin.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["square_plugin"] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        registry = load_registry(extra_plugins=[("square", module)], entry_points=False)
        assert registry.failures == [] and registry.clashes == []
        assert {registry.get("dataset", "square").plugin, registry.get("loss", "weighted_flow_matching").plugin} == {"square"}
        pyproject, run_spec = _blocks("toml")
        assert 'square = "square_plugin"' in pyproject
        (tmp_path / "square_run.toml").write_text(run_spec)
        tiny = ["train.steps=3", "train.batch_size=64", "sample.steps=[1]",
                "sample.num_pictures=32", "sample.picture_solver_steps=2", "model.width=16", "model.depth=1"]
        resolved = load_spec(tmp_path / "square_run.toml", tiny, registry)
        assert resolved.loss.config.weight == 2.0 and resolved.loss.config.times.distribution == "logit_normal"
        out = train(resolved, out=tmp_path / "run", progress=False, registry=registry)
        assert (out / "model.safetensors").is_file()
    finally:
        sys.modules.pop("square_plugin", None)
