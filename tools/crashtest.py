"""How much work a kill costs, and whether parallel runners ever train a cell twice or miss one.

    python -m tools.crashtest --kills 10 --pairs 3 --save      # results/crashtest-<CPU kind>.txt

1. A `smoke` grid (--seeds of them) into a fresh store, SIGKILLed at random moments (uniform between --min-s and
   --max-s after start) --kills times, then run to the end. After each kill: the cut cell's last
   logged epoch and its newest checkpoint; the complete epochs it will recompute are the
   difference (0 or 1), plus the epoch that was in flight.
2. --pairs times: a fresh store and two runners at once (`--workers 2`, sharing by lock), and two
   runners on one queue (`--storage sqlite:///...`): duplicated and missing cells.
"""
from __future__ import annotations

import argparse
import random
import re
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from ablations.grids import expand
from core.config import REPO, load_experiments

GRID = "deviations"


def runner(store: Path, profile: str, data_root: str | None, cache: str | None, *extra: str, seeds: int = 1) -> list[str]:
    cmd = [sys.executable, str(REPO / "run_ablation.py"), "--grid", GRID, "--profile", profile, "--seeds", str(seeds),
           "--tracking-uri", f"sqlite:///{store}/mlflow.db", "--no-system-metrics", *extra]
    if data_root:
        cmd += ["--data-root", data_root]
    if cache:
        cmd += ["--cache-dir", cache]
    return cmd


def cells(store: Path):
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
    exp = client.get_experiment_by_name("alexnet-deviations")
    found = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return client, [r for r in found if r.data.tags.get("role") == "cell"]


def after_kill(store: Path) -> tuple[str, int, int] | None:
    """(cell, last logged epoch, newest checkpoint epoch) of the cell the kill cut, if any."""
    client, runs = cells(store)
    cut = [r for r in runs if r.info.status == "RUNNING"]
    if not cut:
        return None
    r = cut[0]
    logged = max((m.step for m in client.get_metric_history(r.info.run_id, "val_top1_err")), default=0)
    folder = store / "checkpoints" / r.data.tags["config_hash"]
    saved = max((int(m.group(1)) for p in folder.glob("epoch-*.pt") if (m := re.match(r"epoch-(\d+)\.pt", p.name))),
                default=0)
    return r.info.run_name, logged, saved


def duplicates_and_missing(store: Path, expected: int) -> tuple[int, int]:
    _, runs = cells(store)
    finished = Counter(r.data.tags["config_hash"] for r in runs if r.info.status == "FINISHED")
    return sum(n - 1 for n in finished.values()), expected - len(finished)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=4, help="seeds of the killed grid (enough epochs for every kill)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--min-s", type=float, default=4.0)
    ap.add_argument("--max-s", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root")
    ap.add_argument("--cache-dir")
    ap.add_argument("--save", action="store_true", help="write results/crashtest-<CPU kind>.txt")
    args = ap.parse_args(argv)
    from core import runtime
    from ablations.runner import git_commit
    rng = random.Random(args.seed)
    lines = [f"crashtest: grid {GRID}, profile {args.profile}, {args.seeds} seeds, kills after "
             f"{args.min_s:g}-{args.max_s:g} s (seed {args.seed}), commit {git_commit()}, {runtime.describe(runtime.machine())}", ""]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "kills"
        cmd = runner(store, args.profile, args.data_root, args.cache_dir, seeds=args.seeds)
        lines.append("kill  after_s  cut cell                         logged  checkpoint  complete epochs recomputed")
        kills, lost = 0, []
        while kills < args.kills:
            wait = rng.uniform(args.min_s, args.max_s)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                proc.wait(timeout=wait)
                break   # the grid finished before this kill
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            kills += 1
            cut = after_kill(store)
            if cut:
                name, logged, saved = cut
                lost.append(logged - saved)
                lines.append(f"{kills:4d}  {wait:7.1f}  {name:32s} {logged:6d}  {saved:10d}  {logged - saved} "
                             f"(+ the epoch in flight)")
            else:
                lines.append(f"{kills:4d}  {wait:7.1f}  (no cell in training: start-up, caching or between cells)")
        final = subprocess.run(cmd, capture_output=True, text=True)
        variants = len(expand(load_experiments(REPO / "experiments.yaml"), GRID))
        expected = variants * args.seeds
        dup, miss = duplicates_and_missing(store, expected)
        lines += ["", f"kills: {kills}; cells cut mid-training: {len(lost)}; complete epochs recomputed per cut cell: "
                      f"max {max(lost, default=0)}, total {sum(lost)} (plus one partial epoch each); "
                      f"final run exit {final.returncode}; duplicated FINISHED cells {dup}, missing {miss}", ""]
        for mode, extra in (("--workers 2 (locks)", ["--workers", "2"]),
                            ("2 runners, --storage sqlite queue", None)):
            dups = misses = 0
            for k in range(args.pairs):
                base = Path(tmp) / f"{mode[:3]}{k}"
                one = runner(base, args.profile, args.data_root, args.cache_dir)
                if extra:
                    subprocess.run(one + extra, capture_output=True)
                else:
                    q = one + ["--storage", f"sqlite:///{base}/queue.db"]
                    base.mkdir(parents=True)
                    procs = [subprocess.Popen(q, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
                    for p in procs:
                        p.wait()
                d, m = duplicates_and_missing(base, variants)
                dups, misses = dups + d, misses + m
            lines.append(f"{mode}: {args.pairs} fresh stores, duplicated cells {dups}, missing cells {misses}")
    text = "\n".join(lines)
    print(text)
    if args.save:
        out = REPO / "results" / f"crashtest-{runtime.cpu_kind()}.txt"
        out.write_text(text + "\n")
        print(f"saved {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
