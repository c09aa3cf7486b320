"""The shared work queue on a real PostgreSQL: several runners pull a grid's cells from one Optuna
study, every cell is trained exactly once, and a runner killed mid-cell is taken over (its cell
continues from its checkpoint, in its own MLflow run) once its heartbeat stops."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import optuna

from conftest import REPO, mlflow_server
from test_resume import CELLS, check_complete, command, runs

ENV = {**os.environ, "ALEXNET_HEARTBEAT_S": "1"}


def trials(url):
    from ablations.queue import storage_url
    storage = optuna.storages.RDBStorage(storage_url(url))
    (summary,) = optuna.study.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).trials


def test_two_workers_on_postgres_logging_to_an_mlflow_server_train_every_cell_once(tmp_path, tiny_imagefolder,
                                                                                   postgres):
    url = postgres()
    backend = postgres().replace("postgresql://", "postgresql+psycopg://")
    with mlflow_server("--backend-store-uri", backend, "--artifacts-destination", str(tmp_path / "artifacts")) as server:
        cmd = command(tmp_path, tiny_imagefolder)
        cmd[cmd.index("--tracking-uri") + 1] = server
        res = subprocess.run(cmd + ["--storage", url, "--workers", "2", "--checkpoint-dir", str(tmp_path / "ck")],
                             cwd=REPO, capture_output=True, text=True, timeout=600, env=ENV)
        assert res.returncode == 0, res.stderr[res.stderr.find("Traceback"):][:4000] or res.stderr[-3000:]
        found = check_complete(tmp_path, server, tmp_path / "ck")
        weights = mlflow.artifacts.download_artifacts(run_id=found[0].info.run_id, tracking_uri=server,
                                                      artifact_path="config.yaml", dst_path=str(tmp_path / "dl"))
        assert Path(weights).is_file() and list((tmp_path / "artifacts").rglob("weights.pt"))   # on the server's side
    trained = [int(part.split(" trained")[0]) for part in res.stderr.split("done: ")[1:]]
    assert len(trained) == 2 and sum(trained) == CELLS, res.stderr[-2000:]       # both worked, none twice
    states = [t.state.name for t in trials(url)]
    assert states.count("COMPLETE") == CELLS and "RUNNING" not in states and "WAITING" not in states


def test_a_worker_killed_mid_cell_is_taken_over(tmp_path, tiny_imagefolder, postgres):
    url = postgres()
    cmd = command(tmp_path, tiny_imagefolder) + ["--storage", url]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300
    while not list((tmp_path / "store" / "checkpoints").glob("*/epoch-1.pt")) and time.time() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)        # mid-cell: its trial stays RUNNING until the heartbeat is missed
    first.wait(timeout=60)
    assert [t.state.name for t in trials(url)].count("RUNNING") == 1
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(1 resumed from a checkpoint)" in res.stderr
    found = check_complete(tmp_path)
    parents = {r.info.status for r in found if r.data.tags.get("role") == "grid"}
    assert parents == {"FINISHED", "KILLED"}                                   # the dead worker's parent, ended
    states = [t.state.name for t in trials(url)]
    assert states.count("COMPLETE") == CELLS and states.count("FAIL") == 1     # the dead trial, retried once


def test_an_unreachable_queue_is_one_clear_line(tmp_path, tiny_imagefolder):
    from conftest import free_port
    res = subprocess.run(command(tmp_path, tiny_imagefolder) + ["--storage", f"postgresql://postgres@127.0.0.1:{free_port()}/q"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "error: --storage" in res.stderr and "Traceback" not in res.stderr
    _, found = runs(tmp_path)
    assert not found                                                           # no run left behind
    res = subprocess.run(command(tmp_path, tiny_imagefolder) + ["--storage", "redis://x"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "postgresql://" in res.stderr


def test_a_journal_file_is_refused_with_the_reason():
    import pytest
    from ablations.queue import storage_url
    from core.config import ConfigError
    with pytest.raises(ConfigError, match="no heartbeats.*sqlite:///"):
        storage_url("queue.journal")
