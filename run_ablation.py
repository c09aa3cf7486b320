#!/usr/bin/env python
"""Train every variant of an ablation grid and log each run to MLflow.

    python run_ablation.py --grid deviations                  # demo profile, 1 seed
    python run_ablation.py --grid deviations --profile cpu --seeds 2
    python run_ablation.py --list                             # toggles, grids, profiles
    mlflow ui                                                  # compare the runs
    python report.py --grid deviations --out results.md        # the Markdown table

Running the same command again skips every cell already FINISHED (same config_hash).
Exit code 2 on bad input (unknown grid/profile/toggle, bad YAML, missing or broken data).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from ablations.grids import expand
from core.config import PRECISIONS, REPO, ConfigError, load_experiments
from core.toggles import REGISTRY
from core.tracking import DEFAULT_EXPERIMENT
# torch and the engine are imported once the command line and experiments.yaml are checked


def check_device(device: str) -> None:
    """A device this machine has, before any run or cache is made."""
    import torch
    from core.engine import resolve_device
    try:
        dev = resolve_device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"--device {device!r}: this machine has no such CUDA device; use --device cpu (or auto)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", help="grid name from experiments.yaml")
    ap.add_argument("--profile", default="demo", help="profile from experiments.yaml (default: demo)")
    ap.add_argument("--seeds", type=int, default=1, help="repeat each variant with N seeds (default 1)")
    ap.add_argument("--first-seed", type=int, default=0, help="the seeds are K..K+N-1 (default 0)")
    ap.add_argument("--data-root", help="ImageFolder root with train/ and val/, or hf:<name or save_to_disk folder> "
                                        "(else $ALEXNET_DATA_ROOT, else data/ or ../shared/datasets/)")
    ap.add_argument("--cache-dir", help="uint8 cache folder (else $ALEXNET_CACHE_DIR, else ~/.cache/alexnet-ablation)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, else MLflow's default)")
    ap.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    ap.add_argument("--config", default=str(REPO / "experiments.yaml"), help="experiments file")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    ap.add_argument("--precision", choices=PRECISIONS,
                    help="override the profile's precision: fp32 or bf16 forces it, auto resolves it per device "
                         "(default: the profile's). A grid continued on another machine keeps its cells only "
                         "at the precision it started with")
    ap.add_argument("--rerun", action="store_true", help="train cells even if a FINISHED run has their config_hash")
    ap.add_argument("--no-reuse", action="store_true",
                    help="train a cell even when another grid of the experiment has FINISHED it with the same "
                         "config_hash at the same commit (by default that run is copied into this grid)")
    ap.add_argument("--reuse-commit", metavar="COMMIT",
                    help="also copy cells that COMMIT FINISHED (any grid of the experiment), for each variant once "
                         "this commit has retrained one of its cells to exactly COMMIT's numbers (README: Grids "
                         "that share cells)")
    ap.add_argument("--checkpoint-dir", help="per-cell checkpoints and the locks that mark cells in training "
                    "(default: checkpoints/ beside a SQLite store, else ./checkpoints); share it between machines")
    ap.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                    help="write a cell's checkpoint every N epochs (default 1; 0: never)")
    ap.add_argument("--storage", metavar="URL",
                    help="pull the cells from a queue shared by any number of runners: an Optuna RDB storage "
                         "(postgresql://user@host:port/db for many machines, sqlite:///queue.db for one)")
    ap.add_argument("--workers", type=int, default=1, metavar="N",
                    help="start N runners here, the CPU threads split between them (default 1)")
    ap.add_argument("--no-system-metrics", action="store_true", help="do not log MLflow system metrics")
    ap.add_argument("--list", action="store_true", help="print the toggles, grids and profiles, then exit")
    return ap


def show(experiments) -> None:
    print("toggles (paper value first):")
    for t in REGISTRY.values():
        print(f"  {t.name:13s} {' | '.join(map(str, t.choices)):40s} {t.cite:6s} {t.what}")
    print("profiles:")
    for p in experiments.profiles.values():
        print(f"  {p.name:8s} {p.description}")
    print("grids:")
    for g, spec in experiments.grids.items():
        print(f"  {g:15s} {len(expand(experiments, g)):3d} variants  {spec.get('description', '')}")


def check_launch(workers: int, batch_size: int) -> None:
    """torchrun (one cell over K processes) and --workers (one cell per process) do not mix."""
    from core import distributed
    if not distributed.launched():
        return
    k = int(os.environ["WORLD_SIZE"])
    if workers > 1:
        raise ConfigError(f"--workers {workers} under torchrun: torchrun already starts {k} processes for each "
                          f"cell; drop --workers (or run without torchrun for one cell per worker)")
    if batch_size < k:
        raise ConfigError(f"batch_size {batch_size} cannot be split between {k} torchrun processes; "
                          f"use --nproc_per_node {batch_size} or fewer")


def spawn_workers(n: int) -> int:
    """This command n times over, minus --workers, as child processes (the data cache is built and
    the store exists by now); Ctrl-C or SIGTERM stops them all. Each takes its share of the CPUs."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip or a.startswith("--workers="):
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        argv.append(a)
    procs = []
    try:
        for k in range(n):
            procs.append(subprocess.Popen([sys.executable, str(REPO / "run_ablation.py"), *argv],
                                          env={**os.environ, "ALEXNET_WORKER": str(k)}))
            time.sleep(1.0)   # staggered: each claims its first cell before the next starts
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise
    print(f"workers: {n} finished with exit codes {codes}", file=sys.stderr)
    return max(codes)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv=None) -> int:
    return interruptible(lambda: _main(parser().parse_args(argv)))


def interruptible(work) -> int:
    """Ctrl-C and `kill` (SIGTERM) both end the current run as KILLED in MLflow and exit 130; SIGINT
    is re-enabled because shells start background jobs with it ignored."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return work()
    except KeyboardInterrupt:
        print("interrupted: the current run (if any) is marked KILLED in MLflow; run the same command "
              "again to resume", file=sys.stderr)
        return 130


def _main(args) -> int:
    try:
        experiments = load_experiments(args.config)
    except ConfigError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    if args.list:
        show(experiments)
        return 0
    return run(args, experiments)


def run(args, experiments) -> int:
    """Check everything, prepare the data, train the grid's cells; one `error:` line on bad input."""
    try:
        if not args.grid:
            raise ConfigError(f"--grid is required; choices: {', '.join(experiments.grids)}")
        if args.precision:   # the same cells as a profile that says so: config_hash holds the resolved precision
            prof = dataclasses.replace(experiments.profile(args.profile), precision=args.precision)
            experiments = dataclasses.replace(experiments, profiles={**experiments.profiles, args.profile: prof})
        experiments.profile(args.profile)
        expand(experiments, args.grid)              # the grid and its toggles, before torch is imported
        if args.reuse_commit and not re.fullmatch(r"[0-9a-f]{4,40}", args.reuse_commit):
            raise ConfigError(f"--reuse-commit {args.reuse_commit!r} is not a commit hash; give the short hash the "
                              "runs carry (tag git_commit), e.g. 63da6f7")
        if args.reuse_commit and args.no_reuse:
            raise ConfigError("--reuse-commit copies cells and --no-reuse forbids it: pass one of them")
        if args.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {args.workers}")
        if args.storage:
            from ablations.queue import storage_url
            storage_url(args.storage)   # its form, before torch is imported
        if args.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every must be 0 (never) or more, got {args.checkpoint_every}")
        if args.seeds < 1 or args.first_seed < 0:
            raise ConfigError(f"--seeds must be at least 1 and --first-seed at least 0 "
                              f"(got {args.seeds}, {args.first_seed})")
        from ablations.runner import check_writable, default_checkpoint_dir, load_data, plan
        from core.tracking import resolve_uri
        check_writable(args.checkpoint_dir or default_checkpoint_dir(resolve_uri(args.tracking_uri) or "sqlite:///mlflow.db"),
                       "--checkpoint-dir")
        from core import distributed, runtime
        from core.data import DataError
        try:
            runtime.check_environment()
            check_device(args.device)
            cells = plan(experiments, args.grid, args.profile, args.seeds, args.device, first_seed=args.first_seed)
            check_launch(args.workers, cells[0].config.profile.batch_size)
            distributed.init()
            runtime.set_threads()   # counted among this machine's harness processes before any work starts
            lead = distributed.rank() == 0   # under torchrun only rank 0 touches the queue and the store
            if lead and args.storage:
                from ablations.queue import open_storage
                open_storage(args.storage)   # an unreachable queue fails here, before any run is made
            from core.tracking import MlflowTracker, check_store
            if lead:
                check_store(args.tracking_uri)   # an unusable store fails here, before any decoding
            if distributed.local_rank() != 0:
                distributed.barrier()   # local rank 0 builds the data cache first
            data = load_data(cells[0].config.profile, args.data_root, args.cache_dir)
            if distributed.local_rank() == 0:
                distributed.barrier()
            tracker = MlflowTracker(args.experiment, args.tracking_uri,
                                    system_metrics=not args.no_system_metrics) if lead else None
            if lead and args.reuse_commit and not tracker.has_finished(args.reuse_commit):
                raise ConfigError(f"--reuse-commit {args.reuse_commit}: experiment {args.experiment!r} at {tracker.uri} "
                                  "holds no FINISHED cell run of that commit; give the short hash its runs carry "
                                  "(tag git_commit, shown in the reports' header)")
        except DataError as err:
            raise ConfigError(str(err)) from None
    except ConfigError as err:
        print(f"\nerror: {err}", file=sys.stderr)   # on its own line, after any progress bar
        return 2
    if args.workers > 1:
        return spawn_workers(args.workers)
    from ablations.runner import follow, run_grid
    if not lead:
        follow(plan(experiments, args.grid, args.profile, args.seeds, args.device, data, args.first_seed),
               data, args.device)
        distributed.close()
        return 0
    from core.engine import resolve_device
    prof = cells[0].config.profile
    print(f"{args.grid}: {len(cells)} cells on profile {args.profile}, {resolve_device(args.device)}, precision "
          f"{prof.precision}{' (auto)' if experiments.profile(args.profile).precision == 'auto' else ''}, "
          f"{runtime.set_threads()} threads{f' x {distributed.size()} processes' if distributed.size() > 1 else ''} ({len(data.train.labels)} train / {len(data.val.labels)} val images "
          f"from {data.train.root}); MLflow {tracker.uri}, experiment {args.experiment!r}", file=sys.stderr)
    out = run_grid(experiments, args.grid, args.profile, args.seeds, tracker, data, rerun=args.rerun,
                   device=args.device, command=getattr(args, "command", None) or shlex.join(["python", *sys.argv]),
                   first_seed=args.first_seed, checkpoint_dir=args.checkpoint_dir,
                   checkpoint_every=args.checkpoint_every, storage=args.storage, experiment=args.experiment,
                   progress=os.environ.get("ALEXNET_WORKER") is None, reuse=not args.no_reuse,
                   reuse_commit=args.reuse_commit)
    distributed.broadcast(None)   # under torchrun: the other ranks stop
    distributed.close()
    ui = "" if tracker.uri.startswith("http") else f"  (after: mlflow ui --backend-store-uri {tracker.uri})"
    finished = [r.run_id for r in tracker.records(args.grid) if r.status == "FINISHED" and r.tags.get("role") == "cell"]
    print(f"done: {len(out.ran)} trained ({len(out.resumed)} resumed from a checkpoint), "
          f"{len(out.skipped)} already finished (skipped)"
          + (f", {len(out.copied)} copied from another grid's FINISHED run of the same config and commit"
             + (f" (or of {args.reuse_commit}, verified)" if args.reuse_commit else "")
             + " (--no-reuse trains them)" if out.copied else "")
          + (f", {len(out.busy)} being trained by another process (left to it)" if out.busy else "")
          + (f"; retrained to compare with {args.reuse_commit}: {len(out.matched)} the same "
             f"({', '.join(out.matched) or 'none'}), {len(out.unmatched)} not ({', '.join(out.unmatched) or 'none'})"
             if out.matched or out.unmatched else "") + "\n"
          f"runs:   {tracker.run_url()}{ui}\n"
          + (f"parent: {tracker.run_url(out.parent_id)}\n" if out.parent_id else "")
          + (f"curves: {tracker.curves_url(finished)}\n" if finished else "")
          + f"report: python report.py --grid {args.grid} --profile {args.profile}"
          + (f" --experiment {args.experiment}" if args.experiment != DEFAULT_EXPERIMENT else "")
          + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
