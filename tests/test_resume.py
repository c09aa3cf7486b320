"""A grid that survives any crash: SIGKILL at random moments, then the same command, completes the
grid with one FINISHED run per cell, nothing left RUNNING, continuous metrics (no step twice, none
missing) and at most one epoch recomputed per kill; two runners at once on one store share the
cells instead of training them twice."""
from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import mlflow

from conftest import REPO

CELLS = 7   # the deviations grid, one seed


def command(tmp_path, root, cache=None):
    return [sys.executable, "run_ablation.py", "--profile", "smoke", "--grid", "deviations", "--seeds", "1",
            "--tracking-uri", f"sqlite:///{tmp_path}/store/mlflow.db", "--cache-dir", str(cache or tmp_path / "cache"),
            "--data-root", str(root), "--no-system-metrics"]


def runs(tmp_path, uri=None):
    client = mlflow.MlflowClient(uri or f"sqlite:///{tmp_path}/store/mlflow.db")
    exp = client.get_experiment_by_name("alexnet-deviations")
    return client, (client.search_runs([exp.experiment_id], max_results=1000) if exp else [])


def check_complete(tmp_path, uri=None, checkpoints=None):
    client, found = runs(tmp_path, uri)
    cells = [r for r in found if r.data.tags.get("role") == "cell"]
    assert "RUNNING" not in {r.info.status for r in found}
    finished = [r for r in cells if r.info.status == "FINISHED"]
    hashes = Counter(r.data.tags["config_hash"] for r in finished)
    assert len(hashes) == CELLS and set(hashes.values()) == {1}, hashes       # every cell, exactly once
    for r in finished:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_top1_err")]
        assert sorted(steps) == list(range(1, int(r.data.params["epochs_run"]) + 1)), (r.info.run_name, steps)
        assert "val10_top1_err" in r.data.metrics and r.data.tags.get("outcome")
    ckdir = checkpoints or tmp_path / "store" / "checkpoints"
    assert ckdir.is_dir() and not list(ckdir.glob("*/epoch-*.pt"))                # pruned once finished
    return found


def test_sigkill_at_random_moments_then_the_same_command_completes_the_grid(tmp_path, tiny_imagefolder):
    cmd = command(tmp_path, tiny_imagefolder)
    rng = random.Random(7)
    killed = 0
    for _ in range(4):   # from start-up: data caching, store creation, epochs, checkpoint writes, between cells
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(3.0, 10.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            killed += 1
    assert killed >= 2
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    found = check_complete(tmp_path)
    assert {r.info.status for r in found if r.data.tags.get("role") == "grid"} <= {"FINISHED", "KILLED"}
    # a cell run that a dead process left RUNNING although its cell has FINISHED (as older code, or a
    # kill during a --rerun, leaves): the same command, with nothing to train, ends it KILLED
    client, _ = runs(tmp_path)
    done = next(r for r in found if r.data.tags.get("role") == "cell")
    stale = client.create_run(done.info.experiment_id, run_name=done.info.run_name,
                              tags={k: done.data.tags[k] for k in ("grid", "variant", "role", "profile", "config_hash")})
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    check_complete(tmp_path)
    ended = client.get_run(stale.info.run_id)
    assert ended.info.status == "KILLED" and "FINISHED run" in ended.data.tags["ended_by"]


def kill_after_first_checkpoint(tmp_path, cmd):
    """Start the grid, SIGKILL it right after the first checkpoint of its first cell; returns the
    one cell run it left RUNNING."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckdir = tmp_path / "store" / "checkpoints"
    deadline = time.time() + 300
    while not list(ckdir.glob("*/epoch-1.pt")) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    _, found = runs(tmp_path)
    zombie = [r for r in found if r.data.tags.get("role") == "cell" and r.info.status == "RUNNING"]
    assert len(zombie) == 1
    return zombie


def test_a_killed_cell_continues_in_its_own_run_from_its_checkpoint(tmp_path, tiny_imagefolder):
    cmd = command(tmp_path, tiny_imagefolder)
    zombie = kill_after_first_checkpoint(tmp_path, cmd)
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(1 resumed from a checkpoint)" in res.stderr
    found = check_complete(tmp_path)
    resumed = next(r for r in found if r.info.run_id == zombie[0].info.run_id)
    assert resumed.info.status == "FINISHED"                                  # the same run, taken over


def test_a_killed_cell_without_its_checkpoints_is_trained_again_in_a_new_run(tmp_path, tiny_imagefolder):
    """The store came without its checkpoint folder (another machine): the interrupted run is not
    continued from epoch 1 under its old early epochs, but ended KILLED, and the cell gets a new run."""
    cmd = command(tmp_path, tiny_imagefolder)
    zombie = kill_after_first_checkpoint(tmp_path, cmd)
    ckdir = tmp_path / "store" / "checkpoints"
    for folder in ckdir.glob("*/"):
        if folder.name != "parents":
            shutil.rmtree(folder)
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(0 resumed from a checkpoint)" in res.stderr
    found = check_complete(tmp_path)
    old = next(r for r in found if r.info.run_id == zombie[0].info.run_id)
    assert old.info.status == "KILLED" and "no checkpoint" in old.data.tags["ended_by"]
    new = [r for r in found if r.data.tags.get("config_hash") == old.data.tags["config_hash"] and r.info.status == "FINISHED"]
    assert len(new) == 1 and new[0].info.run_id != old.info.run_id


def test_two_runners_started_at_once_on_a_new_store_share_the_cells(tmp_path, tiny_imagefolder):
    cmd = command(tmp_path, tiny_imagefolder)
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    check_complete(tmp_path)
    trained = sum(int(o.split("done: ")[1].split(" trained")[0]) for o in outs)
    assert trained == CELLS, outs                                              # nothing trained twice
