"""Per-epoch checkpoints of one cell, and the lock that says a cell is being trained.

A cell's folder (`<checkpoint dir>/<config_hash>/`) holds `epoch-<k>.pt` files, each written to a
temporary file, fsynced and renamed into place, the previous one kept, so a kill at any moment
leaves at least one whole checkpoint. Loading uses `weights_only=True`; a truncated or corrupt
newest file falls back to the one before it, with a warning. `claim()` takes an exclusive `flock`
on `<config_hash>.lock`: the kernel releases it when the process dies, however it dies, so a
RUNNING run whose lock is free was left by a dead process and may be taken over.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

KEEP = 2                      # checkpoints kept while a cell trains: the newest and the one before
NAME = re.compile(r"^epoch-(\d+)\.pt$")


class Busy(Exception):
    """Another live process holds the lock."""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if absent) for the block; Busy if another
    process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(str(path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.uname().nodename} {os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)   # releases the lock


def is_locked(path: Path) -> bool:
    """True when a live process holds the lock at `path`."""
    if not path.exists():
        return False
    try:
        with locked(path):
            return False
    except Busy:
        return True


def rng_state() -> dict:
    """Every random stream a training step may draw from (the epoch's draws come from their own
    generator, seeded by (seed, epoch), and need no state)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """One cell's checkpoint folder; `every` epochs (0: never)."""

    def __init__(self, folder: Path | str, every: int = 1):
        self.folder, self.every = Path(folder), every

    @property
    def lock_path(self) -> Path:
        return self.folder.with_name(self.folder.name + ".lock")

    def claim(self) -> contextlib.AbstractContextManager[None]:
        """Hold the cell's lock while training it; Busy if a live process trains it."""
        return locked(self.lock_path)

    def due(self, epoch: int) -> bool:
        return self.every > 0 and epoch % self.every == 0

    def files(self) -> list[tuple[int, Path]]:
        """(epoch, path), newest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := NAME.match(p.name))]
        return sorted(found, reverse=True)

    def save(self, epoch: int, state: dict) -> Path:
        """Write atomically: a temporary file, fsync, rename, fsync the folder; then prune."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"epoch-{epoch}.pt"
        tmp = self.folder / f".epoch-{epoch}.pt.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                torch.save({**state, "epoch": epoch}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for _, old in self.files()[KEEP:]:
            old.unlink(missing_ok=True)
        return final

    def latest(self) -> dict | None:
        """The newest checkpoint that loads; a broken newer one is skipped with a warning."""
        for epoch, path in self.files():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                if state.get("epoch") != epoch:
                    raise ValueError(f"holds epoch {state.get('epoch')}")
                return state
            except Exception as err:   # truncated, corrupt, or not a checkpoint
                warnings.warn(f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); "
                              f"falling back to the one before it", RuntimeWarning, stacklevel=2)
        return None

    def clear(self) -> None:
        """Remove every checkpoint of the cell."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def finish(self) -> None:
        """The cell has finished (its final weights are an MLflow artifact): remove its checkpoints
        and, while still holding it, its lock file (a process that opened the old file re-checks,
        under the lock, whether the cell has finished)."""
        self.clear()
        self.lock_path.unlink(missing_ok=True)
