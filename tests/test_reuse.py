"""Grids that share cells: a cell another grid of the experiment has FINISHED with the same
config_hash at the same clean commit is copied into the new grid (params, every metric's history,
outcome, artifacts), not trained again; another commit, a dirty tree or --no-reuse trains it."""
from __future__ import annotations

import mlflow
import pytest

from ablations import runner
from ablations.runs import load
from ablations.report import header
from core.config import load_experiments
from core.tracking import MemoryTracker, MlflowTracker

from conftest import REPO

COMMIT = "abc1234"


@pytest.fixture
def setup(tmp_path, tiny_imagefolder, monkeypatch):
    monkeypatch.setattr(runner, "git_commit", lambda: COMMIT)
    monkeypatch.setenv("ALEXNET_THREADS", "1")
    ex = load_experiments(REPO / "experiments.yaml")
    data = runner.load_data(ex.profile("smoke"), str(tiny_imagefolder), str(tmp_path / "cache"), workers=1)
    return ex, data


def grid(ex, data, tracker, name, tmp_path, **kw):
    return runner.run_grid(ex, name, "smoke", 1, tracker, data, progress=False, device="cpu",
                           checkpoint_dir=tmp_path / "checkpoints", **kw)


def test_a_cell_finished_by_another_grid_is_copied_with_its_history_and_artifacts(setup, tmp_path):
    ex, data = setup
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker("shared", uri, system_metrics=False)
    first = grid(ex, data, tracker, "seed", tmp_path)                  # baseline + the seed's configuration
    assert first.ran == ["baseline/seed0", "seed/seed0"] and not first.copied
    second = grid(ex, data, tracker, "claims", tmp_path)               # baseline + three removals
    assert second.copied == ["baseline/seed0"]
    assert second.ran == ["lrn=false/seed0", "overlap_pool=false/seed0", "pca=none/seed0"]

    client = mlflow.MlflowClient(uri)
    source = next(r for r in tracker.records("seed") if r.name == "baseline/seed0")
    copy = next(r for r in tracker.records("claims") if r.name == "baseline/seed0")
    assert copy.run_id != source.run_id and copy.status == "FINISHED"
    assert copy.tags["reused_from"] == source.run_id and copy.tags["reused_from_grid"] == "seed"
    assert copy.tags["grid"] == "claims" and copy.tags["config_hash"] == source.tags["config_hash"]
    assert copy.tags["outcome"] == source.tags["outcome"] and copy.params == source.params
    assert copy.tags["mlflow.parentRunId"] == second.parent_id
    keys = [k for k in source.metrics if not k.startswith("system/")]
    assert "val_top1_err" in keys and "val10_top1_err" in keys
    for key in keys:   # every step of every metric, the same values
        history = lambda run_id: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history(copy.run_id) == history(source.run_id), key
    paths = {a.path for a in client.list_artifacts(copy.run_id)} | {a.path for a in client.list_artifacts(copy.run_id, "model")}
    assert {"config.yaml", "model/weights.pt"} <= paths

    g = load(tracker, "claims")   # the report uses the copy, and says so
    assert len(g.cells) == 4 and g.cells["reused_from"].notna().sum() == 1
    assert "1 of them copied from grid `seed`" in header(g, tracker, "report.py")

    again = grid(ex, data, tracker, "claims", tmp_path)                 # nothing left: skipped, not copied again
    assert not again.ran and not again.copied and len(again.skipped) == 4


def test_another_commit_a_dirty_tree_or_no_reuse_trains_the_cell(setup, tmp_path):
    ex, data = setup
    tracker = MemoryTracker("shared")
    assert grid(ex, data, tracker, "seed", tmp_path).ran == ["baseline/seed0", "seed/seed0"]
    cell = runner.plan(ex, "claims", "smoke", 1, "cpu", data)[0]
    assert runner.reusable(tracker, cell.config.hash(), COMMIT).name == "baseline/seed0"
    for other in ("def5678", COMMIT + "-dirty", "unknown"):
        assert runner.reusable(tracker, cell.config.hash(), other) is None, other
    out = grid(ex, data, tracker, "claims", tmp_path, reuse=False)
    assert not out.copied and out.ran[0] == "baseline/seed0" and len(out.ran) == 4
