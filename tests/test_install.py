"""A fresh, non-editable install works from another directory: ``fmmkit spec list``, training a built-in
spec by name, and the pytest plugin's hypothesis profile.

Honest but cheap: the package is built into a wheel from a copy of the sources and pip-installed
(``--no-deps``) into a new virtual environment, outside the source tree; the new environment reaches
the already installed dependencies (torch & co.) through a folder of links to them that leaves out
every fmmkit distribution (an editable fmmkit's dist-info there would make two fmmkits visible), so
the only fmmkit it can import is the wheel's.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _site_dirs() -> list[Path]:
    """The site-packages folders this interpreter imports from (its own and any added by .pth files)."""
    return [Path(p) for p in dict.fromkeys(sys.path) if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]


def _without_fmmkit(target: Path) -> Path:
    """A folder of links to every installed package except fmmkit's own distributions and editable hooks."""
    target.mkdir()
    for site in _site_dirs():
        for entry in site.iterdir():
            lowered = entry.name.lower()
            if lowered.startswith(("fmmkit", "__editable__", "_fmmkit")) or entry.suffix == ".pth" or (target / entry.name).exists():
                continue
            (target / entry.name).symlink_to(entry)
    return target


def _build_env() -> dict[str, str]:
    """Build with the newest setuptools on the path (one that writes wheels itself, >= 70.1)."""
    best = max((d for d in importlib.metadata.distributions() if d.metadata["Name"] == "setuptools"),
               key=lambda d: tuple(int(x) for x in d.version.split(".")[:2]))
    return {**_clean_env(), "PYTHONPATH": str(best.locate_file(""))}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("FMMKIT_", "HYPOTHESIS_"))}


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env or _clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_fresh_non_editable_install_runs_outside_the_source_tree(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "fmmkit", source / "fmmkit", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp_path / "dist")], cwd=source, env=_build_env())
    wheel = next((tmp_path / "dist").glob("fmmkit-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    (purelib / "zz_dependencies.pth").write_text(f"{_without_fmmkit(tmp_path / 'dependencies')}\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([str(python), "-c", "import fmmkit, importlib.metadata as m; print(fmmkit.__file__); "
                  "print(sum(d.metadata['Name'] == 'fmmkit' for d in m.distributions()))"], cwd=elsewhere).split()
    assert Path(where[0]).is_relative_to(purelib) and where[1] == "1"  # the wheel's copy, and the only one

    fmmkit = str(venv / "bin" / "fmmkit")
    listed = _run([fmmkit, "spec", "list"], cwd=elsewhere)
    assert "checkerboard_lsd " in listed and "digits_teacher " in listed
    tiny = ["train.steps=3", "train.batch_size=64", "train.threads=1", "model.width=16", "model.depth=1",
            "sample.steps=[1]", "sample.num_pictures=32", "sample.picture_solver_steps=2", "log.tensorboard=false"]
    sets = [arg for kv in tiny for arg in ("--set", kv)]
    trained = _run([fmmkit, "train", "checkerboard_lsd", "--quiet", "--out", "run", *sets], cwd=elsewhere)
    assert trained.strip() == "trained: run (3 steps, 0 skipped)" and (elsewhere / "run" / "model.safetensors").is_file()

    (elsewhere / "test_profile.py").write_text(
        "from hypothesis import settings\n\n\ndef test_profile():\n"
        "    assert settings().max_examples == 30 and settings().derandomize\n")
    out = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-profile=fmmkit-ci"],
               cwd=elsewhere)
    assert "1 passed" in out
