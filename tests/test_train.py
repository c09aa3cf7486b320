"""train.py: one configuration from --set or a YAML file, under a grid cell's MLflow contract."""
from __future__ import annotations

import mlflow
import pytest

from conftest import cli


def test_one_configuration_trains_logs_and_resumes(tmp_path, tiny_imagefolder):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = tmp_path / "run.yaml"
    run.write_text("profile: smoke\nseed: 2\nlrn: false\nlr: 2e-2\n")
    args = ("train.py", "-c", str(run), "--set", "momentum=pytorch", "--set", "profile.momentum=0.8",
            "--tracking-uri", uri, "--cache-dir", str(tmp_path / "cache"), "--data-root", str(tiny_imagefolder))
    res = cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["alexnet-deviations"])
    cell = runs[runs["tags.role"] == "cell"].iloc[0]
    assert (cell["params.lrn"], cell["params.momentum"], cell["params.lr"], cell["params.seed"]) == \
        ("False", "pytorch", "0.02", "2")
    assert cell["tags.grid"] == "single" and cell["status"] == "FINISHED" and len(runs) == 2
    assert cell["tags.variant"] == "lrn=False,momentum=pytorch"
    again = cli(*args)
    assert again.returncode == 0 and "0 trained (0 resumed from a checkpoint), 1 already finished" in again.stderr


@pytest.mark.parametrize("sets,expected", [(["lrm=false"], "unknown key(s) ['lrm']"),
                                           (["lr=fast"], "lr must be a positive number"),
                                           (["lrn=1"], "invalid value 1 for toggle 'lrn'"),
                                           (["nonsense"], "write KEY=VALUE")])
def test_bad_keys_are_refused(tmp_path, sets, expected):
    res = cli("train.py", "--profile", "smoke", *[a for s in sets for a in ("--set", s)],
              "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert res.returncode == 2 and expected in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "mlflow.db").exists()
