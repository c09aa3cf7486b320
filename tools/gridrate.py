"""How fast a grid trains on this machine, one way of running it against another: runs
`run_ablation.py ARGS` (plain, with --workers, or under torchrun) for a fixed time into a fresh
store, stops it with SIGTERM, and counts the epochs the store holds.

    python -m tools.gridrate --seconds 480 -- --grid deviations --profile cpu
    python -m tools.gridrate --seconds 480 -- --grid deviations --profile cpu --workers 2
    python -m tools.gridrate --seconds 480 --torchrun 2 -- --grid deviations --profile cpu

Prints the epochs finished, the rate between the first and the last finished epoch (epochs/hour
and training images/s) and the machine. The data cache must exist (run the grid once, or build
it), so that decoding is not timed.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import mlflow
import numpy as np

from core import runtime
from core.config import REPO


def run_for(args: list[str], seconds: float, torchrun: int, folder: str) -> str:
    uri = f"sqlite:///{folder}/mlflow.db"
    launcher = [sys.executable] if torchrun <= 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    cmd = [*launcher, str(REPO / "run_ablation.py"), *args, "--tracking-uri", uri, "--no-system-metrics",
           "--experiment", "gridrate"]
    with open(f"{folder}/log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log, start_new_session=True)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=120)
    if torchrun > 1:   # torchrun's processes run in sessions of their own
        subprocess.run(["pkill", "-TERM", "-f", folder], check=False)
        time.sleep(5)
    return uri


def epochs(uri: str) -> tuple[list[float], int, float]:
    """End times (s) of every finished epoch in the store, the training images per epoch and the
    mean epochs per cell of the cells begun."""
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("gridrate")
    found = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    cells = [r for r in found if r.data.tags.get("role") == "cell"]
    ends = sorted(m.timestamp / 1000 for r in cells for m in client.get_metric_history(r.info.run_id, "val_top1_err"))
    images = int(cells[0].data.params["train_images"]) if cells else 0
    per_cell = float(np.mean([int(r.data.params["epochs_run"]) for r in cells])) if cells else 0.0
    return ends, images, per_cell


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=480, help="how long to let it train (default 480)")
    ap.add_argument("--torchrun", type=int, default=1, metavar="K", help="run under torchrun with K processes")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then run_ablation.py's arguments")
    a = ap.parse_args(argv)
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    with tempfile.TemporaryDirectory(prefix="gridrate-") as folder:
        ends, images, per_cell = epochs(run_for(args, a.seconds, a.torchrun, folder))
    how = f"torchrun x{a.torchrun} " if a.torchrun > 1 else ""
    if len(ends) < 2:
        print(f"{how}{' '.join(args)}: {len(ends)} epochs in {a.seconds:.0f} s: too few to time; give more --seconds")
        return 1
    rate = (len(ends) - 1) / (ends[-1] - ends[0])
    print(f"{how}{' '.join(args)}: {len(ends)} epochs in {a.seconds:.0f} s; {rate * 3600:.1f} epochs/hour "
          f"({rate * 3600 / per_cell:.2f} cells/hour at {per_cell:.1f} epochs per cell), {rate * images:.0f} "
          f"training images/s, between the first and last finished epoch "
          f"({runtime.describe(runtime.machine())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
