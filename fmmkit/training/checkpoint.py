"""Checkpoints: atomic directories of pickle-free state files with a checksummed manifest.

Layout: ``RUN_DIR/checkpoints/step-000001000/`` holding ``NAME.safetensors`` (state every process
shares), ``NAME.rankR.safetensors`` (state of process R: its random streams, and under FSDP its
weight and optimiser shards) and ``checkpoint.json`` (step, number of processes, and the size and
SHA-256 of every file). Rank 0 writes everything except FSDP shards, which each process writes (so
sharded checkpoints need a file system all processes share). A checkpoint is written into a hidden
staging directory and renamed into place when complete, so a crash mid-write leaves the previous
checkpoints untouched; only the last ``keep`` are kept, and never at the cost of the checkpoint just
written (the newest readable one). A step that is written again replaces a damaged checkpoint of that
step (a run resumed from an earlier one after the newest was damaged) and keeps a readable one (a
signal on a checkpoint step). A write that fails (a full disk, a permission) removes its staging
folder and is one line (:class:`CheckpointWriteError`); the checkpoints before it stay usable.

Loading reads only what the manifest lists, and only plain file names inside the checkpoint's own
folder; every file must be a regular file of the listed size before a byte of it is read (a forged
manifest cannot make fmmkit read /etc/passwd, or /dev/zero without end). Then checksums, and only
JSON and safetensors are parsed (see :mod:`fmmkit.training.statefile`). A damaged checkpoint, or one
that does not fit the run, is reported and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmmkit.core.errors import EnvironmentProblem, UserError, os_error_fix, warn
from fmmkit.runs.layout import CHECKPOINT_DIR
from fmmkit.training.distributed import DistEnv, all_agree, barrier, gather_bytes
from fmmkit.training.statefile import StateFormatError, dumps_state, loads_state

MANIFEST = "checkpoint.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_RANK_FILE = re.compile(r"^(?P<name>.+)\.rank(?P<rank>\d+)\.safetensors$")
#: What a manifest may name: a plain file name in the checkpoint's own folder (no path, no leading dot).
_PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: A manifest lists a few files; anything larger is not one of ours.
MAX_MANIFEST_BYTES = 16 * 2**20


class CheckpointError(UserError):
    """A checkpoint cannot be used: missing, truncated, corrupted, or not written by fmmkit."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint that does not fit the run being resumed (other shapes, parts or settings)."""


class CheckpointWriteError(EnvironmentProblem):
    """A checkpoint could not be written (a full disk, a permission); the earlier ones are intact."""


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint read into memory: its manifest, its shared and own-rank parts, and the
    parts named in ``all_ranks`` from every process (``others[name][rank]``)."""

    path: Path
    manifest: dict[str, Any]
    parts: dict[str, Any] = field(default_factory=dict)
    others: dict[str, dict[int, Any]] = field(default_factory=dict)

    @property
    def step(self) -> int:
        """Optimiser steps done when the checkpoint was written."""
        return int(self.manifest["step"])


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of the complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, step: int, shared: dict[str, Any], per_rank: dict[str, Any], env: DistEnv,
                    keep: int, meta: dict[str, Any] | None = None, gather: bool = True,
                    device: torch.device | None = None, replace: bool = False) -> Path:
    """Write one checkpoint; every process calls this. Rank 0 writes the ``shared`` parts, the
    manifest and the rename; the ``per_rank`` parts are gathered to rank 0 and written there
    (``gather``; small state such as RNG streams) or written by each process (weight shards).
    ``replace``: a checkpoint of this step already on disk is replaced even when its files check out (a
    resumed run skipped it: it did not load or did not fit the run). Returns the checkpoint directory;
    CheckpointWriteError (one line) when the file system refuses."""
    root = Path(run_dir) / CHECKPOINT_DIR
    final = root / f"step-{step:09d}"
    staging = root / f".step-{step:09d}.tmp"
    try:
        if env.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        barrier(env)
        for name, state in per_rank.items():
            if gather:
                blobs = gather_bytes(dumps_state(state), env, device or torch.device("cpu"))
                for rank, blob in enumerate(blobs if env.is_main else []):
                    _write(staging / f"{name}.rank{rank}.safetensors", blob)
            else:
                _write(staging / f"{name}.rank{env.rank}.safetensors", dumps_state(state))
        if env.is_main:
            for name, state in shared.items():
                _write(staging / f"{name}.safetensors", dumps_state(state))
        barrier(env)
        if env.is_main:
            files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(staging.iterdir())}
            manifest = {"format": FORMAT_VERSION, "step": step, "world_size": env.world_size, **(meta or {}),
                        "time": time.time(), "files": files}
            _write(staging / MANIFEST, json.dumps(manifest, indent=1).encode())
            _fsync_dir(staging)
            _install(staging, final, replace)
            _fsync_dir(root)
            for _, old in list_checkpoints(run_dir)[:-keep]:
                if old != final:  # the checkpoint just written is the newest readable one: never pruned
                    shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        if env.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointWriteError(_write_problem(exc, Path(run_dir), step)) from None
    barrier(env)
    return final


def _install(staging: Path, final: Path, replace: bool = False) -> None:
    """Rename a complete staging folder into place. The same step saved twice (a signal on a checkpoint
    step) keeps the first; a damaged checkpoint of that step, or one a resumed run skipped (``replace``:
    the run came back to it after resuming from an earlier one), is replaced."""
    if not final.exists() and not final.is_symlink():
        os.replace(staging, final)
        return
    problem = checkpoint_problem(final)
    if problem is None and replace:
        problem = f"{final}: skipped when the run resumed (it did not load or did not fit the run)"
    if problem is None:
        shutil.rmtree(staging)
        return
    warn(f"{problem}; replacing it with the checkpoint just written")
    aside = final.with_name(f".{final.name}.damaged.tmp")  # removed by remove_staging if a crash leaves it
    _remove(aside)
    os.replace(final, aside)
    os.replace(staging, final)
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _write_problem(exc: OSError, run_dir: Path, step: int) -> str:
    earlier = [s for s, _ in list_checkpoints(run_dir) if s != step]
    kept = f"the checkpoint of step {earlier[-1]} is intact" if earlier else "no earlier checkpoint was written"
    return (f"{run_dir / CHECKPOINT_DIR}: {exc.strerror or exc} while writing the checkpoint of step {step}; {kept}; "
            f"{os_error_fix(exc)}, then continue with 'fmmkit train --resume {run_dir}'")


def _regular_file(file: Path) -> os.stat_result:
    """The stat of a regular file (not a symlink, device or folder); CheckpointError otherwise."""
    try:
        st = os.lstat(file)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{file}: not a regular file (a checkpoint holds only its own files)")
    return st


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a checkpoint directory; CheckpointError if missing, unreadable or not ours."""
    file = path / MANIFEST
    if not os.path.lexists(file):
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MANIFEST})")
    st = _regular_file(file)
    if st.st_size > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{file}: {st.st_size} bytes, too large for a checkpoint manifest")
    try:
        with open(file, "rb") as f:
            manifest = json.loads(f.read(MAX_MANIFEST_BYTES).decode())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: damaged ({type(exc).__name__}: {exc})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if files is None or manifest.get("format") != FORMAT_VERSION or not isinstance(files, dict) or not all(
            isinstance(e, dict) and _count(e.get("bytes")) and isinstance(e.get("sha256"), str)
            for e in files.values()):
        raise CheckpointError(f"{file}: not an fmmkit checkpoint manifest (format {FORMAT_VERSION})")
    if not (_count(manifest.get("step")) and _count(manifest.get("world_size")) and manifest["world_size"] >= 1):
        raise CheckpointError(f"{file}: damaged (step and world_size must be non-negative integers)")
    for name in files:
        if not _PART_NAME.match(name):
            raise CheckpointError(f"{file}: names {name!r}; a checkpoint may list only plain file names inside "
                                  "its own folder")
    return manifest


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_part(path: Path, name: str, manifest: dict[str, Any]) -> Any:
    """One state file: a regular file of the manifest's size (checked before reading), then its
    checksum, then parsed without pickle."""
    entry = manifest["files"].get(name)
    file = path / name
    if entry is None:
        raise CheckpointError(f"{file}: not listed in {MANIFEST}")
    size = _regular_file(file).st_size
    if size != entry["bytes"]:
        raise CheckpointError(f"{file}: truncated or damaged ({size} bytes on disk, {entry['bytes']} in {MANIFEST})")
    try:
        with open(file, "rb") as f:
            data = f.read(entry["bytes"] + 1)
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read ({exc.strerror or exc})") from None
    if len(data) != entry["bytes"]:
        raise CheckpointError(f"{file}: truncated or damaged ({len(data)} bytes read, {entry['bytes']} in {MANIFEST})")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{file}: damaged (SHA-256 does not match {MANIFEST})")
    try:
        return loads_state(data)
    except StateFormatError as exc:
        raise CheckpointError(f"{file}: {exc}") from None


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint directory cannot be read (its manifest, sizes and checksums), or None; parses nothing."""
    try:
        if not path.is_dir() or path.is_symlink():
            raise CheckpointError(f"{path}: not a checkpoint folder")
        manifest = read_manifest(path)
        for name, entry in manifest["files"].items():
            file = path / name
            if _regular_file(file).st_size != entry["bytes"] or _sha256(file) != entry["sha256"]:
                raise CheckpointError(f"{file}: damaged (size or SHA-256 does not match {MANIFEST})")
    except CheckpointError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: cannot read ({exc.strerror or exc})"
    return None


def read_checkpoint(path: Path, env: DistEnv, all_ranks: tuple[str, ...] = ()) -> LoadedCheckpoint:
    """Read the shared parts, this process's parts and the ``all_ranks`` parts of every process."""
    manifest = read_manifest(path)
    loaded = LoadedCheckpoint(path, manifest)
    for name in sorted(manifest["files"]):
        m = _RANK_FILE.match(name)
        if m is None:
            loaded.parts[name.removesuffix(".safetensors")] = read_part(path, name, manifest)
        elif m.group("name") in all_ranks:
            loaded.others.setdefault(m.group("name"), {})[int(m.group("rank"))] = read_part(path, name, manifest)
        elif int(m.group("rank")) == env.rank:
            loaded.parts[m.group("name")] = read_part(path, name, manifest)
    return loaded


def load_latest(run_dir: Path, env: DistEnv, device: torch.device, all_ranks: tuple[str, ...] = (),
                use: Callable[[LoadedCheckpoint], None] | None = None) -> LoadedCheckpoint:
    """The newest checkpoint every process can read (and ``use``, when given, accepts: it raises
    CheckpointMismatch for one that does not fit the run); the others are reported and skipped."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from (nothing in {CHECKPOINT_DIR}/); "
                              f"start the run with 'fmmkit train SPEC --out {run_dir}'")
    if env.is_main:  # a step entry that is no folder (replaced by a file or a link) is skipped, and said so
        for entry in sorted((Path(run_dir) / CHECKPOINT_DIR).iterdir()):
            if _STEP_DIR.match(entry.name) and (entry.is_symlink() or not entry.is_dir()):
                warn(f"{entry}: not a checkpoint folder; skipped, trying the previous checkpoint")
    problems = []
    for _, path in reversed(found):
        problem, loaded = None, None
        try:
            loaded = read_checkpoint(path, env, all_ranks)
        except CheckpointError as exc:
            problem = str(exc)
        if all_agree(problem is None, env, device):
            assert loaded is not None
            if use is None:
                return loaded
            try:
                use(loaded)
                return loaded
            except CheckpointMismatch as exc:
                problem = str(exc)
        problems.append(problem or f"{path}: damaged on another process")
        if env.is_main:
            warn(f"{problems[-1]}; trying the previous checkpoint")
    raise CheckpointError(f"{run_dir}: every checkpoint in {CHECKPOINT_DIR}/ is damaged or does not fit the run "
                          f"(the newest: {problems[0]}); nothing to resume from")


def remove_staging(run_dir: Path) -> None:
    """Delete half-written checkpoints left by a crash."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if root.is_dir():
        for p in root.glob(".step-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
