"""Checkpoints: atomic directories of pickle-free state files with a checksummed manifest.

Layout: ``RUN_DIR/checkpoints/step-000001000/`` holding ``NAME.safetensors`` (state every process
shares), ``NAME.rankR.safetensors`` (state of process R: its random streams, and under FSDP its
weight and optimiser shards) and ``checkpoint.json`` (step, number of processes, and the size and
SHA-256 of every file). Rank 0 writes everything except FSDP shards, which each process writes (so
sharded checkpoints need a file system all processes share). A checkpoint is written into a hidden
staging directory and renamed into place when complete, so a crash mid-write leaves the previous
checkpoints untouched; only the last ``keep`` are kept. Loading checks sizes and checksums, parses
only JSON and safetensors (see :mod:`fmmkit.training.statefile`), and falls back to the previous
checkpoint when the newest is damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmmkit.core.errors import UserError
from fmmkit.runs.layout import CHECKPOINT_DIR
from fmmkit.training.distributed import DistEnv, all_agree, barrier, gather_bytes
from fmmkit.training.statefile import StateFormatError, dumps_state, loads_state

MANIFEST = "checkpoint.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_RANK_FILE = re.compile(r"^(?P<name>.+)\.rank(?P<rank>\d+)\.safetensors$")


class CheckpointError(UserError):
    """A checkpoint cannot be used: missing, truncated, corrupted, or not written by fmmkit."""


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


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    print(f"fmmkit: warning: {message}", file=sys.stderr, flush=True)


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
                    device: torch.device | None = None) -> Path:
    """Write one checkpoint; every process calls this. Rank 0 writes the ``shared`` parts, the
    manifest and the rename; the ``per_rank`` parts are gathered to rank 0 and written there
    (``gather``; small state such as RNG streams) or written by each process (weight shards).
    Returns the checkpoint directory."""
    root = Path(run_dir) / CHECKPOINT_DIR
    final = root / f"step-{step:09d}"
    staging = root / f".step-{step:09d}.tmp"
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
        if final.exists():  # the same step saved twice (a signal on a checkpoint step): keep the first
            shutil.rmtree(staging)
        else:
            os.replace(staging, final)
            _fsync_dir(root)
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    return final


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a checkpoint directory; CheckpointError if missing or unreadable."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / MANIFEST}: damaged ({type(exc).__name__}: {exc})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if files is None or manifest.get("format") != FORMAT_VERSION or not isinstance(files, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
            for e in files.values()):
        raise CheckpointError(f"{path / MANIFEST}: not an fmmkit checkpoint manifest (format {FORMAT_VERSION})")
    return manifest


def read_part(path: Path, name: str, manifest: dict[str, Any]) -> Any:
    """One state file, checked against the manifest's size and checksum, then parsed without pickle."""
    entry = manifest["files"].get(name)
    file = path / name
    if entry is None:
        raise CheckpointError(f"{file}: not listed in {MANIFEST}")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read ({exc.strerror or exc})") from None
    if len(data) != entry["bytes"]:
        raise CheckpointError(f"{file}: truncated or damaged ({len(data)} bytes, {entry['bytes']} expected)")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{file}: damaged (SHA-256 does not match {MANIFEST})")
    try:
        return loads_state(data)
    except StateFormatError as exc:
        raise CheckpointError(f"{file}: {exc}") from None


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


def load_latest(run_dir: Path, env: DistEnv, device: torch.device, all_ranks: tuple[str, ...] = ()) -> LoadedCheckpoint:
    """The newest checkpoint every process can read; damaged ones are reported and skipped."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from (nothing in {CHECKPOINT_DIR}/); "
                              f"start the run with 'fmmkit train SPEC --out {run_dir}'")
    for _, path in reversed(found):
        problem, loaded = None, None
        try:
            loaded = read_checkpoint(path, env, all_ranks)
        except CheckpointError as exc:
            problem = str(exc)
        if all_agree(problem is None, env, device):
            assert loaded is not None
            return loaded
        if env.is_main:
            warn(f"{problem or f'{path}: damaged on another process'}; trying the previous checkpoint")
    raise CheckpointError(f"{run_dir}: every checkpoint in {CHECKPOINT_DIR}/ is damaged; nothing to resume from")


def remove_staging(run_dir: Path) -> None:
    """Delete half-written checkpoints left by a crash."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if root.is_dir():
        for p in root.glob(".step-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
