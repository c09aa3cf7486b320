"""tools/rederive.py, the SQL re-derivation of a one-at-a-time grid's primary analysis, against the
report's own analysis on a real MLflow SQLite store holding a synthetic grid with known effects and
a late start."""
from __future__ import annotations

import math
import sqlite3

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from ablations import report
from ablations.runs import load
from core.tracking import MlflowTracker
from tools import rederive

from conftest import cli
from test_analysis import EFFECTS, one_at_a_time


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The synthetic `dev` grid of test_analysis written into an MLflow SQLite store (the outcome
    tag as the engine logs it: the late-started base run of seed 3 `late_start`)."""
    db = tmp_path_factory.mktemp("rederive") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.create_experiment("synthetic")
    for i, run in enumerate(one_at_a_time().runs):
        late = run.name == "baseline/seed3"
        tags = {**run.tags, "outcome": "late_start" if late else "learned", "mlflow.runName": run.name}
        made = client.create_run(experiment, start_time=1_000 + i, tags=tags)
        client.log_batch(made.info.run_id, params=[Param(k, v) for k, v in run.params.items()],
                         metrics=[Metric(k, v, 0, step) for k, hist in run.metrics.items() for step, v in hist])
        client.set_terminated(made.info.run_id, "FINISHED")
    return db


def test_the_sql_figures_equal_the_reports(store):
    table = rederive.cells(store, "synthetic", "dev", "cpu")
    base, rows = rederive.analyse(table)
    fam = report.primary_effects(load(MlflowTracker("synthetic", f"sqlite:///{store}", system_metrics=False), "dev"))
    assert base == "baseline" and set(rows) == set(fam) == set(EFFECTS)
    for name, (_, effect) in EFFECTS.items():
        r, e = rows[name], fam[name]
        assert (r["n"], r["dropped"]) == (e.n, e.dropped) == (11, 1)          # the late start dropped
        assert math.isclose(r["mean"], 100 * e.mean) and math.isclose(r["sd"], 100 * e.sd)
        assert math.isclose(r["p"], e.p) and math.isclose(r["p_holm"], e.p_holm) and r["level"] == e.level
        assert all(math.isclose(a, 100 * b) for a, b in zip(r["ci"], e.ci))
        assert r["ci"][0] <= 100 * effect <= r["ci"][1]


def test_the_latest_finished_run_of_a_cell_is_used(store, tmp_path):
    """A later FINISHED run of the same (variant, seed) replaces the earlier one, as in the report."""
    db = tmp_path / "mlflow.db"
    db.write_bytes(store.read_bytes())
    client = MlflowClient(f"sqlite:///{db}")
    old = rederive.cells(db, "synthetic", "dev", "cpu")[("lrn=false", 0)]
    run = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id],
                             "tags.variant = 'lrn=false' and params.seed = '0'")[0]
    again = client.create_run(run.info.experiment_id, start_time=10**6, tags=run.data.tags)
    client.log_batch(again.info.run_id, params=[Param(k, v) for k, v in run.data.params.items()],
                     metrics=[Metric("val10_top1_err", 0.9, 0, 6)])
    client.set_terminated(again.info.run_id, "FINISHED")
    assert old[1] != 0.9 and rederive.cells(db, "synthetic", "dev", "cpu")[("lrn=false", 0)][1] == 0.9


def test_bad_input_is_refused_and_the_store_left_alone(store, tmp_path):
    before = store.read_bytes()
    res = cli("-m", "tools.rederive", str(store), "--experiment", "synthetic", "--grid", "dev", "--profile", "cpu")
    assert res.returncode == 0 and "| `lrn=false` | 11 | 1 |" in res.stdout
    res = cli("-m", "tools.rederive", str(store), "--experiment", "synthetic", "--grid", "nope", "--profile", "cpu")
    assert res.returncode == 2 and "check the three names" in res.stderr
    res = cli("-m", "tools.rederive", str(tmp_path / "none.db"), "--experiment", "x", "--grid", "dev", "--profile", "cpu")
    assert res.returncode == 2 and "no store at" in res.stderr and not (tmp_path / "none.db").exists()
    assert store.read_bytes() == before
    with sqlite3.connect(store) as con:
        assert con.execute("select count(*) from runs").fetchone()[0] == 48
