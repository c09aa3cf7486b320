"""Run a grid: validate everything, prepare the data once, then train every (variant, seed) cell
under one MLflow parent run. Cells whose config_hash already has a FINISHED run in the experiment
are skipped (resume after an interruption by running the same command again).
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from core import outcomes, runtime
from core.config import REPO, ConfigError, Experiments, Profile, RunConfig
from core.data import load_split, resolve_root, train_stats
from core.engine import Data, resolve_device, train
from core.toggles import REGISTRY, as_dict, differences
from .grids import Variant, expand



@dataclass(frozen=True)
class Cell:
    variant: Variant
    config: RunConfig

    @property
    def name(self) -> str:
        return f"{self.variant.name}/seed{self.config.seed}"


@dataclass
class GridOutcome:
    parent_id: str = ""
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def plan(experiments: Experiments, grid: str, profile: str, seeds: int, device: str | None = None,
         data: Data | None = None, first_seed: int = 0) -> list[Cell]:
    """Every (variant, seed) cell, seed-major (all variants of a seed before the next seed). The
    profile's `auto` precision is resolved for `device`; with `data`, each config carries the
    dataset's identity (part of config_hash)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if first_seed < 0:
        raise ConfigError(f"--first-seed must be 0 or more, got {first_seed}")
    prof = experiments.profile(profile)
    prof = replace(prof, precision=runtime.resolve_precision(prof.precision, resolve_device(device)))
    variants = expand(experiments, grid)
    identity = data_identity(data) if data is not None else ""
    return [Cell(v, RunConfig(prof, v.toggles, seed, data=identity))
            for seed in range(first_seed, first_seed + seeds) for v in variants]


def data_identity(data: Data) -> str:
    """Both splits' identities (classes, files, labels, sizes) in one digest."""
    return hashlib.sha1(f"{data.train.identity}|{data.val.identity}".encode()).hexdigest()[:16]


def load_data(profile: Profile, data_root: str | None = None, cache: str | None = None) -> Data:
    root = resolve_root(profile.dataset, data_root)
    train_split = load_split(root, "train", profile.prep_size, max_per_class=profile.max_per_class, cache=cache)
    val_split = load_split(root, "val", profile.prep_size, classes=train_split.classes,
                           max_per_class=profile.max_per_class, cache=cache)
    return Data(train_split, val_split, train_stats(train_split))


def git_commit() -> str:
    """The code's commit; `-dirty` when tracked files differ from it (then the commit alone does
    not say which code made a run)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def child_params(cfg: RunConfig, data: Data) -> dict:
    p = cfg.profile
    toggles = as_dict(cfg.toggles)
    params = {name: toggles[name] for name in REGISTRY}   # `epochs` is the toggle; `epochs_run` the count
    params.update(epochs_run=cfg.epochs, seed=cfg.seed, profile=p.name, dataset=p.dataset,
                  image_size=p.image_size, width=p.width, batch_size=p.batch_size, lr=p.lr,
                  sgd_momentum=p.momentum, weight_decay=p.weight_decay, prep_size=p.prep_size,
                  stem=list(p.stem), lr_patience=cfg.patience, late_after=outcomes.late_after(p.epoch_scale),
                  precision=p.precision, epoch_scale=p.epoch_scale, data_identity=cfg.data,
                  train_images=len(data.train.labels),
                  val_images=len(data.val.labels), num_classes=len(data.train.classes), pca_eigval=[round(float(v), 6) for v in data.stats.eigval])
    return params


def run_grid(experiments: Experiments, grid: str, profile: str, seeds: int, tracker, data: Data,
             rerun: bool = False, progress: bool = True, device: str | None = None,
             command: str = "", first_seed: int = 0) -> GridOutcome:
    cells = plan(experiments, grid, profile, seeds, device, data, first_seed)
    done = set() if rerun else tracker.finished_hashes(grid)
    todo = [c for c in cells if c.config.hash() not in done]
    out = GridOutcome(skipped=[c.name for c in cells if c not in todo])
    if not todo:
        return out   # nothing left to train: no empty parent run
    total_epochs = sum(c.config.epochs for c in todo)
    bar = tqdm(total=total_epochs, unit="epoch", desc=f"{grid}/{profile}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    parent_tags = {"grid": grid, "profile": profile, "seeds": seeds, "git_commit": git_commit(),
                   "precision": cells[0].config.profile.precision,
                   "cells": len(cells), "skipped": len(out.skipped), "role": "grid", "command": command}
    with tracker.parent(f"{grid}-{profile}-{time.strftime('%Y%m%d-%H%M%S')}", parent_tags,
                        {"grid": grid, "profile": profile, "seeds": seeds}) as parent:
        out.parent_id = parent.run_id
        parent.log_dict({"grid": grid, "profile": profile, "seeds": seeds,
                         "cells": [{"name": c.name, "config_hash": c.config.hash(), **c.config.resolved()}
                                   for c in cells]}, "grid.yaml")
        for cell in todo:
            cfg = cell.config
            bar.set_postfix_str(cell.name)
            tags = {"grid": grid, "variant": cell.variant.name, "config_hash": cfg.hash(),
                    "base_variant": cells[0].variant.name, "seed": cfg.seed,
                    "profile": profile, "git_commit": parent_tags["git_commit"], "role": "cell",
                    "precision": cfg.profile.precision,
                    "flipped": ",".join(f"{k}={v}" for k, v in differences(cfg.toggles).items()) or "none"}
            dataset = {"name": f"{cfg.profile.dataset}-{cfg.profile.prep_size}px",
                       "digest": data.train.digest, "source": data.train.root}
            params = {**child_params(cfg, data), "device": str(resolve_device(device)), "cpu": runtime.cpu_kind()}
            with tracker.child(cell.name, params, tags, dataset) as run:
                run.log_dict(cfg.resolved(), "config.yaml")
                result = train(cfg, data, run, on_epoch=lambda e, m: bar.update(1), device=device)
                bar.update(cfg.epochs - result.epochs_run)
            out.ran.append(cell.name)
    bar.close()
    return out
