"""The specs shipped in the package (``fmmkit/specs/NAME.toml``), by name.

``fmmkit train checkerboard_lsd``, ``fmmkit spec show|check NAME``, ``fmmkit spec list`` and ``fmmkit
spec copy NAME DIR`` (and ``fmmkit.train("checkerboard_lsd")``) resolve them, so a pip install can run
every example. The package is their one home: the repository's ``examples/`` folder is a generated
copy (``fmmkit spec copy --all examples``), which a test keeps identical.
"""

from __future__ import annotations

import difflib
import re
import shutil
from importlib import resources
from pathlib import Path

from fmmkit.spec.errors import SpecError

SPEC_SUFFIX = ".toml"
SUMMARY_WIDTH = 100


def builtin_spec_dir() -> Path:
    """The folder of the shipped specs (fmmkit is installed unzipped, so it is a real folder)."""
    return Path(str(resources.files("fmmkit") / "specs"))


def builtin_spec_names() -> list[str]:
    """Names of the shipped specs, sorted."""
    return sorted(p.stem for p in builtin_spec_dir().glob(f"*{SPEC_SUFFIX}"))


def builtin_spec_path(name: str) -> Path:
    """The file of the shipped spec ``name`` (with or without ``.toml``); SpecError with a did-you-mean."""
    stem = name.removesuffix(SPEC_SUFFIX)
    path = builtin_spec_dir() / f"{stem}{SPEC_SUFFIX}"
    if path.is_file():
        return path
    names = builtin_spec_names()
    close = difflib.get_close_matches(stem, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise SpecError([f"{name}: no spec file or built-in spec of that name; {hint}built-in specs: {', '.join(names)} "
                     "(fmmkit spec list)"])


def looks_like_name(source: str) -> bool:
    """A bare name ("checkerboard_lsd"), not a path: no folder part and no .toml suffix."""
    return not any(sep in source for sep in ("/", "\\")) and not source.endswith(SPEC_SUFFIX)


def resolve_spec_source(source: str | Path) -> Path:
    """A spec file from a path, or from a built-in spec's name when no such file exists."""
    path = Path(source)
    if path.exists() or not looks_like_name(str(source)):
        return path
    return builtin_spec_path(str(source))


def summary(name: str) -> str:
    """The first sentence of the spec's leading comment (what it trains)."""
    lines = []
    for line in builtin_spec_path(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    first = re.split(r"[.:;]\s+(?=[A-Z])", " ".join(lines), maxsplit=1)[0].removesuffix(".")
    return first if len(first) <= SUMMARY_WIDTH else first[: SUMMARY_WIDTH - 3].rsplit(" ", 1)[0] + "..."


def copy_specs(names: list[str], out: Path) -> list[Path]:
    """Copy shipped specs into ``out`` (created); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        source = builtin_spec_path(name)
        shutil.copyfile(source, out / source.name)
        written.append(out / source.name)
    return written
