"""Runs of another commit, reused once this commit reproduces them (run_ablation.py --reuse-commit):
the first cell of a variant is retrained and compared epoch by epoch with the other commit's run;
only after an exact match are that variant's other cells copied, and the report then pairs the two
commits. A commit whose arithmetic differs copies nothing."""
from __future__ import annotations

import pytest

import core.engine
from core import runtime
from ablations import runner
from ablations.report import header
from ablations.runs import ReportError, load
from core.config import load_experiments
from core.tracking import MlflowTracker

from conftest import REPO
from test_bad_input import error_line, run_cli

OLD, NEW = "aaa1111", "bbb2222"


@pytest.fixture
def store(tmp_path, tiny_imagefolder, monkeypatch):
    """The experiments, the tiny data, an MLflow store, and the commit runs are made by (a list to set)."""
    commit = [OLD]
    monkeypatch.setattr(runner, "git_commit", lambda: commit[0])
    monkeypatch.setenv("ALEXNET_THREADS", "1")
    ex = load_experiments(REPO / "experiments.yaml")
    data = runner.load_data(ex.profile("smoke"), str(tiny_imagefolder), str(tmp_path / "cache"), workers=1)
    return ex, data, MlflowTracker("shared", f"sqlite:///{tmp_path}/mlflow.db", system_metrics=False), commit


@pytest.fixture
def setup(store, tmp_path):
    """Seeds 0 and 1 of the `seed` grid made by the old commit; the new one makes what follows."""
    ex, data, tracker, commit = store
    assert grid(ex, data, tracker, "seed", tmp_path).ran == ["baseline/seed0", "seed/seed0", "baseline/seed1", "seed/seed1"]
    commit[0] = NEW
    return ex, data, tracker


def grid(ex, data, tracker, name, tmp_path, seeds=2, **kw):
    return runner.run_grid(ex, name, "smoke", seeds, tracker, data, progress=False, device="cpu",
                           checkpoint_dir=tmp_path / "checkpoints", **kw)


def by_name(tracker, grid_name: str) -> dict:
    return {r.name: r for r in tracker.records(grid_name) if r.tags.get("role") == "cell"}


def test_a_variant_retrained_to_the_same_numbers_is_copied_from_the_other_commit(setup, tmp_path):
    ex, data, tracker = setup
    out = grid(ex, data, tracker, "claims", tmp_path, reuse_commit=OLD)
    assert out.matched == ["baseline/seed0"] and not out.unmatched
    assert out.copied == ["baseline/seed1"]              # the variant's other cell: copied, not trained
    assert "baseline/seed0" in out.ran and len(out.ran) == 7

    old, new = by_name(tracker, "seed"), by_name(tracker, "claims")
    proof, copy = new["baseline/seed0"], new["baseline/seed1"]
    assert proof.tags["git_commit"] == NEW and proof.tags["matches_commit"] == OLD
    assert proof.tags["matches_run"] == old["baseline/seed0"].run_id
    assert copy.tags["git_commit"] == OLD and copy.tags["copied_at_commit"] == NEW   # the code that trained it
    assert copy.tags["verified_by"] == proof.run_id and copy.tags["reused_from"] == old["baseline/seed1"].run_id
    assert copy.metrics["val10_top1_err"] == old["baseline/seed1"].metrics["val10_top1_err"]

    g = load(tracker, "claims")                          # two commits, paired without --pool
    precision = copy.params["precision"]
    assert len(g.cells) == 8 and not g.pooled and set(g.groups) == {(OLD, precision), (NEW, precision)}
    assert g.same_code == {OLD: (NEW, ["baseline/seed0"])}
    assert f"`{OLD}` and `{NEW}` paired: `baseline/seed0` retrained at `{NEW}`" in header(g, tracker, "report.py")
    assert len(load(tracker, "claims", commit=NEW).cells) == 8

    again = grid(ex, data, tracker, "claims", tmp_path, reuse_commit=OLD)
    assert not again.ran and not again.copied and len(again.skipped) == 8


def test_a_cell_the_other_commit_made_on_this_kind_of_machine_is_checked_first(store, tmp_path, monkeypatch):
    """Seed 0 was trained on another kind of machine (so retraining it here proves nothing): the
    runner checks on seed 1 first, then copies seed 0 too."""
    ex, data, tracker, commit = store
    kind = runtime.cpu_kind()
    with monkeypatch.context() as m:
        m.setattr(runtime, "cpu_kind", lambda: "ANOTHER_KIND")
        grid(ex, data, tracker, "seed", tmp_path, seeds=1)
    grid(ex, data, tracker, "seed", tmp_path, seeds=1, first_seed=1)
    assert {r.name: r.params["cpu"] for r in by_name(tracker, "seed").values()} == {
        "baseline/seed0": "ANOTHER_KIND", "seed/seed0": "ANOTHER_KIND", "baseline/seed1": kind, "seed/seed1": kind}
    commit[0] = NEW
    out = grid(ex, data, tracker, "claims", tmp_path, reuse_commit=OLD)
    assert out.ran[0] == "baseline/seed1" and out.matched == ["baseline/seed1"]
    assert out.copied == ["baseline/seed0"] and len(out.ran) == 7


def test_a_cell_the_other_commit_made_with_other_threads_is_not_the_check(store, tmp_path, monkeypatch):
    """The thread count orders the float sums: seed 0 made with 2 threads cannot be reproduced by a
    1-thread runner, so the check is seed 1 (made with 1), logged as the run param `threads`."""
    ex, data, tracker, commit = store
    with monkeypatch.context() as m:
        m.setenv("ALEXNET_THREADS", "2")
        grid(ex, data, tracker, "seed", tmp_path, seeds=1)
    grid(ex, data, tracker, "seed", tmp_path, seeds=1, first_seed=1)
    assert {r.name: r.params["threads"] for r in by_name(tracker, "seed").values()} == {
        "baseline/seed0": "2", "seed/seed0": "2", "baseline/seed1": "1", "seed/seed1": "1"}
    commit[0] = NEW
    out = grid(ex, data, tracker, "claims", tmp_path, reuse_commit=OLD)
    assert out.ran[0] == "baseline/seed1" and out.matched == ["baseline/seed1"] and not out.unmatched
    assert out.copied == ["baseline/seed0"] and len(out.ran) == 7


def test_a_commit_that_trains_differently_copies_nothing(setup, tmp_path, monkeypatch):
    ex, data, tracker = setup
    step = core.engine.train_step

    def other_arithmetic(model, optimizer, x, y, precision="fp32", scale=1.0):
        return step(model, optimizer, x, y, precision, scale * 1.001)   # a change in the code's numbers
    monkeypatch.setattr(core.engine, "train_step", other_arithmetic)
    out = grid(ex, data, tracker, "claims", tmp_path, reuse_commit=OLD)
    assert out.unmatched == ["baseline/seed0", "baseline/seed1"] and not out.matched and not out.copied
    assert len(out.ran) == 8                             # every cell trained, as without the flag
    new = by_name(tracker, "claims")
    assert new["baseline/seed1"].tags["differs_from_run"] == by_name(tracker, "seed")["baseline/seed1"].run_id
    assert "train_loss" in new["baseline/seed1"].tags["differs_in"]
    assert all(r.tags["git_commit"] == NEW and "matches_commit" not in r.tags for r in new.values())
    assert load(tracker, "claims").same_code == {}


def test_runs_of_two_commits_without_a_match_are_not_paired(setup, tmp_path):
    ex, data, tracker = setup
    grid(ex, data, tracker, "seed", tmp_path, first_seed=2)   # the same grid, more seeds, at the new commit
    with pytest.raises(ReportError, match="not paired by default"):
        load(tracker, "seed")


def test_reuse_commit_is_checked_before_training(tmp_path, tiny_imagefolder):
    common = ["--grid", "seed", "--data-root", str(tiny_imagefolder), "--no-system-metrics"]
    res, _ = run_cli(tmp_path, *common, "--reuse-commit", "HEAD~1")
    assert res.returncode == 2 and "is not a commit hash" in error_line(res)
    res, _ = run_cli(tmp_path, *common, "--reuse-commit", "abc1234", "--no-reuse")
    assert res.returncode == 2 and "pass one of them" in error_line(res)
    res, uri = run_cli(tmp_path, *common, "--reuse-commit", "abc1234")
    assert res.returncode == 2 and "holds no FINISHED cell run of that commit" in error_line(res)
    assert "done:" not in res.stderr
