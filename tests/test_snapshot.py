"""tools.snapshot: a whole, checked copy of a SQLite MLflow store while a process writes to it; bad
input changes nothing."""
from __future__ import annotations

import sqlite3
import threading

import mlflow

from conftest import cli


def make_store(path, runs=3):
    client = mlflow.MlflowClient(f"sqlite:///{path}")
    exp = client.create_experiment("snap", artifact_location=str(path.parent / "art"))
    ids = []
    for i in range(runs):
        run = client.create_run(exp, run_name=f"r{i}", tags={"grid": "g"})
        client.log_metric(run.info.run_id, "val_top1_err", 0.5 - i / 10, step=1)
        if i:
            client.set_terminated(run.info.run_id, "FINISHED")
        ids.append(run.info.run_id)
    return client, exp, ids


def test_a_copy_taken_while_a_writer_logs_is_whole_and_readable(tmp_path):
    client, exp, ids = make_store(tmp_path / "mlflow.db")
    stop = threading.Event()

    def writer():   # a live runner logging epochs meanwhile
        step = 2
        while not stop.is_set():
            client.log_metric(ids[0], "val_top1_err", 0.3, step=step)
            step += 1
    t = threading.Thread(target=writer)
    t.start()
    try:
        res = cli("-m", "tools.snapshot", str(tmp_path / "mlflow.db"), str(tmp_path / "copy.db"))
    finally:
        stop.set()
        t.join()
    assert res.returncode == 0, res.stderr
    assert "3 runs (2 FINISHED, 1 RUNNING), integrity ok" in res.stdout
    copy = mlflow.MlflowClient(f"sqlite:///{tmp_path}/copy.db")
    runs = copy.search_runs([exp])
    assert sorted(r.info.run_id for r in runs) == sorted(ids)
    assert len(copy.get_metric_history(ids[0], "val_top1_err")) >= 1
    assert not list(tmp_path.glob(".copy.db.partial"))


def test_bad_input_names_the_fix_and_leaves_the_destination_as_it_was(tmp_path):
    make_store(tmp_path / "mlflow.db")
    dest = tmp_path / "copy.db"
    dest.write_bytes(b"the previous snapshot")
    plain = tmp_path / "plain.db"
    with sqlite3.connect(plain) as db:
        db.execute("CREATE TABLE t (x)")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    cases = [(tmp_path / "missing.db", dest, "no such SQLite store"),
             (tmp_path / "mlflow.db", tmp_path / "mlflow.db", "is the store itself"),
             (tmp_path / "mlflow.db", tmp_path / "nofolder" / "copy.db", "no such folder"),
             (plain, dest, "not an MLflow store"),
             (tmp_path / "junk.db", dest, "cannot be read as a SQLite database")]
    for source, target, message in cases:
        res = cli("-m", "tools.snapshot", str(source), str(target))
        assert res.returncode == 2 and message in res.stderr, (source, res.stderr)
        assert res.stderr.count("error:") == 1
        assert dest.read_bytes() == b"the previous snapshot"
    assert not (tmp_path / "nofolder").exists() and not list(tmp_path.glob(".*.partial"))
    source = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(source.search_runs([source.get_experiment_by_name("snap").experiment_id])) == 3   # source untouched
