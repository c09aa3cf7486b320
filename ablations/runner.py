"""Run a grid: validate everything, prepare the data once, then train every (variant, seed) cell
under one MLflow parent run. Cells whose config_hash already has a FINISHED run in the experiment
are skipped; an interrupted cell continues from its newest checkpoint into its own run (resume
after any interruption by running the same command again), and one whose checkpoints are gone (the
store moved to another machine without them) is ended KILLED and trained again in a new run.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from core import distributed, outcomes, runtime, stream
from core.checkpoint import Busy, Checkpoints, is_locked, locked
from core.config import REPO, ConfigError, Experiments, Profile, RunConfig
from core.data import load_split, resolve_root, train_stats
from core.engine import Data, Result, resolve_device, train
from core.toggles import REGISTRY, as_dict, differences
from core.tracking import NullRun
from . import samecode
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
    resumed: list[str] = field(default_factory=list)   # of `ran`: continued from a checkpoint
    busy: list[str] = field(default_factory=list)      # being trained by another live process
    copied: list[str] = field(default_factory=list)    # not trained: another grid's FINISHED run copied
    matched: list[str] = field(default_factory=list)   # of `ran`: reproduced --reuse-commit's run exactly
    unmatched: list[str] = field(default_factory=list) # of `ran`: compared with it, and not the same


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


def load_data(profile: Profile, data_root: str | None = None, cache: str | None = None,
              workers: int | None = None, skip_unreadable: bool = False) -> Data:
    root = resolve_root(profile.dataset, data_root)
    kw = dict(max_per_class=profile.max_per_class, cache=cache, workers=workers, skip_unreadable=skip_unreadable)
    train_split = load_split(root, "train", profile.prep_size, **kw)
    val_split = load_split(root, "val", profile.prep_size, classes=train_split.classes, **kw)
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


def default_checkpoint_dir(tracking_uri: str) -> Path:
    """Beside a SQLite store (`<store folder>/checkpoints`), else `./checkpoints`."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "checkpoints"
    return Path("checkpoints").resolve()


def check_writable(folder: Path | str, option: str) -> None:
    """ConfigError naming `option` unless `folder` can be written (or created); creates nothing."""
    folder = Path(folder).resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {folder} ({existing} is not a writable folder); "
                          f"pass {option} with a writable folder")


def take_over_parents(tracker, grid: str, locks: Path, records: list) -> list[str]:
    """End as KILLED the grid's parent runs (in `records`) left RUNNING by a process that died (no
    live process holds their lock)."""
    dead = [r.run_id for r in records
            if r.tags.get("role") == "grid" and r.status == "RUNNING" and not is_locked(locks / f"{r.run_id}.lock")]
    for run_id in dead:
        tracker.end(run_id, "KILLED", {"ended_by": "a later runner: the process that ran it had died"})
    return dead


def end_superseded_cells(tracker, records: list, root: Path) -> list[str]:
    """End as KILLED the grid's cell runs (in `records`) left RUNNING although their cell has a
    FINISHED run and no live process holds the cell's lock (a process that died before it, at any
    commit, left them)."""
    finished = {r.tags.get("config_hash") for r in records if r.tags.get("role") == "cell" and r.status == "FINISHED"}
    dead = [r.run_id for r in records if r.tags.get("role") == "cell" and r.status == "RUNNING"
            and r.tags.get("config_hash") in finished
            and not is_locked(Checkpoints(root / r.tags["config_hash"]).lock_path)]
    for run_id in dead:
        tracker.end(run_id, "KILLED", {"ended_by": "a later runner: the process that ran it had died, "
                                                   "and the cell has a FINISHED run"})
    return dead


NO_CHECKPOINT = ("a later runner: no checkpoint of it was left to continue from (another machine, or the "
                 "checkpoint folder removed); the cell was trained again in a new run")


def resumable(tracker, records: list, config_hash: str, commit: str):
    """The run to continue for a cell (`records`: the grid's runs): its newest KILLED or ownerless
    RUNNING run made by this commit (None: start a new run). Other ownerless RUNNING runs of the
    cell are ended KILLED."""
    runs = sorted((r for r in records if r.tags.get("config_hash") == config_hash
                   and r.tags.get("role") == "cell" and r.status in ("RUNNING", "KILLED")),
                  key=lambda r: r.start_ms or 0)
    chosen = next((r for r in reversed(runs) if r.tags.get("git_commit") == commit), None)
    for r in runs:
        if r is not chosen and r.status == "RUNNING":
            tracker.end(r.run_id, "KILLED", {"ended_by": "a later runner: the process that ran it had died"})
    return chosen


class LocalCells:
    """The cells one runner trains in order (the same interface as ablations.queue.CellQueue)."""

    def __init__(self, cells: list[Cell]):
        self.todo = list(cells)

    def pending(self) -> bool:
        return bool(self.todo)

    def next(self, attrs=None):
        return self.todo.pop(0) if self.todo else None

    def finish(self, value):
        pass

    def release(self):
        pass


def run_grid(experiments: Experiments, grid: str, profile: str, seeds: int, tracker, data: Data,
             rerun: bool = False, progress: bool = True, device: str | None = None,
             command: str = "", first_seed: int = 0, checkpoint_dir: Path | str | None = None,
             checkpoint_every: int = 1, storage: str | None = None, experiment: str = "",
             reuse: bool = True, reuse_commit: str | None = None) -> GridOutcome:
    """Train the grid's cells that have no FINISHED run. Each cell is claimed with a lock in
    `checkpoint_dir` (a cell a live process is training is left to it), checkpointed every
    `checkpoint_every` epochs (0: never), and an interrupted cell (KILLED, or RUNNING with no
    live owner) made by the same commit is resumed from its newest checkpoint into its own run.
    storage: an Optuna RDB URL; the cells are pulled from the shared queue there (any number of
    runners, on any machines) instead of trained in order. reuse: a cell that another grid of the
    experiment has FINISHED with the same config_hash at the same (clean) commit is copied into
    this grid (copy_cell), not trained again. reuse_commit: also copy cells FINISHED by that commit,
    for each variant once this commit has retrained one of them to the same numbers (samecode)."""
    cells = plan(experiments, grid, profile, seeds, device, data, first_seed)
    done = set() if rerun else tracker.finished_hashes(grid)
    todo = [c for c in cells if c.config.hash() not in done]
    out = GridOutcome(skipped=[c.name for c in cells if c not in todo])
    root = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(tracker.uri)
    locks = root / "parents"
    commit = git_commit()
    if reuse_commit and reuse and not rerun:   # one cell a variant checks first whether reusing is safe
        todo = samecode.probes_first(todo, tracker, tracker.records(grid), commit, reuse_commit,
                                     str(resolve_device(device)), runtime.set_threads())
    if storage:
        from .queue import CellQueue, study_name
        source = CellQueue(storage, study_name(experiment or tracker.experiment, grid, profile,
                                                [c.config.hash() for c in cells]), todo,
                           on_dead_trial=lambda attrs: end_dead_parent(tracker, grid, attrs.get("parent_run_id")))
    else:
        records = tracker.records(grid)   # one search for both
        take_over_parents(tracker, grid, locks, records)
        if not rerun:
            end_superseded_cells(tracker, records, root)
        source = LocalCells(todo)
    if not todo or not source.pending():
        return out   # nothing left to train: no empty parent run
    bar = tqdm(total=None if storage else sum(c.config.epochs for c in todo), unit="epoch",
               desc=f"{grid}/{profile}", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    parent_tags = {"grid": grid, "profile": profile, "seeds": seeds, "git_commit": commit,
                   "precision": cells[0].config.profile.precision,
                   "cells": len(cells), "skipped": len(out.skipped), "role": "grid", "command": command,
                   "processes": distributed.size()}
    with contextlib.ExitStack() as stack:
        parent = stack.enter_context(tracker.parent(f"{grid}-{profile}-{time.strftime('%Y%m%d-%H%M%S')}",
                                                    parent_tags, {"grid": grid, "profile": profile, "seeds": seeds}))
        stack.enter_context(locked(locks / f"{parent.run_id}.lock"))
        stack.callback((locks / f"{parent.run_id}.lock").unlink, missing_ok=True)   # before the lock is released
        out.parent_id = parent.run_id
        parent.log_dict({"grid": grid, "profile": profile, "seeds": seeds,
                         "cells": [{"name": c.name, "config_hash": c.config.hash(), **c.config.resolved()}
                                   for c in cells]}, "grid.yaml")
        while (cell := source.next({"parent_run_id": parent.run_id})) is not None:
            cfg = cell.config
            bar.set_postfix_str(cell.name)
            ckpt = Checkpoints(root / cfg.hash(), checkpoint_every)
            result, copied = None, False
            try:
                with ckpt.claim():
                    records = [] if rerun else tracker.records(grid)   # one search per cell
                    if any(r.status == "FINISHED" and r.tags.get("config_hash") == cfg.hash() for r in records):
                        out.skipped.append(cell.name)                     # finished meanwhile
                    else:
                        prior = None if rerun else resumable(tracker, records, cfg.hash(), commit)
                        same = None if rerun or not reuse else reusable(tracker, cfg.hash(), commit)
                        older, proof = None, None
                        if same is None and reuse and reuse_commit and not rerun:
                            older = tracker.find_finished(cfg.hash(), reuse_commit)
                            proof = samecode.verified_by(records, cell.variant.name, commit, reuse_commit)
                            if older is not None and proof:
                                same, older = older, None
                            elif older is not None and not samecode.comparable(
                                    older, str(resolve_device(device)), runtime.set_threads()):
                                older = None   # made on another kind of machine: training here cannot reproduce it
                        if copied := same is not None:
                            result = copy_cell(grid, cell, cells[0].variant.name, profile, commit, tracker,
                                               data, same, proof)
                            ckpt.clear()
                            out.copied.append(cell.name)
                            bar.update(cfg.epochs)
                        else:
                            if prior is not None and ckpt.latest() is None:   # its checkpoints are gone
                                tracker.end(prior.run_id, "KILLED", {"ended_by": NO_CHECKPOINT})
                                prior = None   # retrained from epoch 1: a new run, not the old one's early epochs
                            if prior is None:
                                ckpt.clear()   # never continue a checkpoint that no run of this commit owns
                            result, verdict = train_cell(grid, cell, cells[0].variant.name, profile, commit, tracker,
                                                         data, device, ckpt, prior.run_id if prior else None, bar, older)
                            ckpt.finish()
                            if verdict:
                                (out.matched if "matches_run" in verdict else out.unmatched).append(cell.name)
            except Busy:
                out.busy.append(cell.name)
                bar.update(cfg.epochs)
                source.release()
                continue
            except BaseException:
                source.release()   # the queue gives the cell to another runner
                raise
            source.finish(result.metrics.get("val10_top1_err") if result else None)
            if result and not copied:
                out.ran.append(cell.name)
                if result.resumed_from:
                    out.resumed.append(cell.name)
    bar.close()
    return out


def end_dead_parent(tracker, grid: str, run_id: str | None) -> None:
    """A queue worker died: end its parent run if it is still RUNNING."""
    if run_id and any(r.run_id == run_id and r.status == "RUNNING" for r in tracker.records(grid)):
        tracker.end(run_id, "KILLED", {"ended_by": "a later runner: the process that ran it had died"})


def cell_tags(grid: str, cell: Cell, base: str, profile: str, commit: str) -> dict:
    cfg = cell.config
    return {"grid": grid, "variant": cell.variant.name, "config_hash": cfg.hash(), "base_variant": base,
            "seed": cfg.seed, "profile": profile, "git_commit": commit, "role": "cell",
            "precision": cfg.profile.precision,
            "flipped": ",".join(f"{k}={v}" for k, v in differences(cfg.toggles).items()) or "none"}


def dataset_input(cell: Cell, data: Data) -> dict:
    p = cell.config.profile
    return {"name": f"{p.dataset}-{p.prep_size}px", "digest": data.train.digest, "source": data.train.root}


def reusable(tracker, config_hash: str, commit: str):
    """A FINISHED cell run of `config_hash` made by `commit`, from any grid of the experiment: the
    same configuration trained by the same code: the same measurement, made once.
    A dirty or unknown commit never matches: its code is not known to be the same."""
    if commit == "unknown" or commit.endswith("-dirty"):
        return None
    return tracker.find_finished(config_hash, commit)


def copy_cell(grid: str, cell: Cell, base: str, profile: str, commit: str, tracker, data: Data, source,
              verified_by: str | None = None):
    """`source` (a RunRecord from reusable) copied into a new run of this grid's cell: its params,
    every metric's history (not MLflow's system metrics), its outcome and artifacts (weights,
    config.yaml), tagged `reused_from` (the run first trained) and `reused_from_grid`. A run of
    another commit (verified_by: this commit's run that reproduced that commit's numbers) keeps
    the commit that trained it in `git_commit`; `copied_at_commit` names this one."""
    made_by = source.tags.get("git_commit", commit)
    tags = {**cell_tags(grid, cell, base, profile, made_by), "outcome": source.tags.get("outcome", ""),
            "reused_from": source.tags.get("reused_from", source.run_id),
            "reused_from_grid": source.tags.get("reused_from_grid", source.tags.get("grid", ""))}
    if made_by != commit:
        tags.update(copied_at_commit=commit, verified_by=verified_by or "")
    by_step: dict[int, dict[str, float]] = {}
    for key in source.metrics:
        if not key.startswith("system/"):
            for step, value in tracker.history(source.run_id, key):
                by_step.setdefault(step, {})[key] = value
    with tracker.child(cell.name, source.params, tags, dataset_input(cell, data)) as run:
        for step in sorted(by_step):
            run.log_metrics(by_step[step], step=step)
        if not tracker.copy_artifacts(source.run_id, run.run_id):
            run.log_dict(cell.config.resolved(), "config.yaml")
            run.set_tags({"weights": "none: the source run's artifacts could not be read"})
    return Result(dict(source.metrics), tags["outcome"], int(source.params.get("epochs_run", 0)),
                  source.metrics.get("wall_time_s", 0.0), 0)


def train_cell(grid: str, cell: Cell, base: str, profile: str, commit: str, tracker, data: Data, device,
               ckpt: Checkpoints, resume: str | None, bar, older=None):
    """One cell into its own MLflow run: a new one, or `resume`, the run it continues. older:
    another commit's FINISHED run of the cell, compared with this one once trained (samecode).
    Returns the result and the comparison's tags ({} without `older`)."""
    cfg = cell.config
    tags = cell_tags(grid, cell, base, profile, commit)
    dataset = dataset_input(cell, data)
    params = {**child_params(cfg, data), "device": str(resolve_device(device)), "cpu": runtime.cpu_kind(),
              "threads": runtime.set_threads(), "processes": distributed.size(),
              "input": stream.resolve(cfg.profile.input, data.train.images, resolve_device(device))}
    with tracker.child(cell.name, params, tags, dataset, resume=resume) as run:
        if not resume:
            run.log_dict(cfg.resolved(), "config.yaml")
        distributed.broadcast(cfg.hash())   # under torchrun: the other ranks train it with this one
        result = train(cfg, data, run, on_epoch=lambda e, m: bar.update(1), device=device, checkpoints=ckpt)
        bar.update(cfg.epochs - result.epochs_run + result.resumed_from)
        verdict = samecode.verdict_tags(tracker, run.run_id, older) if older is not None else {}
        if verdict:
            run.set_tags(verdict)
    return result, verdict


def follow(cells: list[Cell], data: Data, device=None) -> int:
    """A torchrun rank other than 0: train, with rank 0, each cell it names, until it names none
    (it alone decides, logs and checkpoints). Returns the number of cells trained."""
    by_hash = {c.config.hash(): c for c in cells}
    trained = 0
    while (config_hash := distributed.broadcast(None)) is not None:
        train(by_hash[config_hash].config, data, NullRun(), device=device)
        trained += 1
    return trained
