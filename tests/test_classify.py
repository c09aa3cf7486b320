"""classify_image.py on a run of the smoke grid: names, probabilities, and every broken input."""
from __future__ import annotations

import contextlib
import io

import re

import mlflow

import classify_image
import pytest
import torch

from conftest import SHARED, cli


@pytest.fixture(scope="module")
def cell(smoke_store):
    uri, tmp, _ = smoke_store
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["alexnet-deviations"], filter_string="tags.role = 'cell'")
    return uri, tmp, runs.iloc[0]["run_id"]


IMAGE = next((SHARED / "val" / "n01440764").iterdir())


def test_top_k_with_names_from_a_run(cell):
    uri, _, run_id = cell
    res = cli("classify_image.py", "-i", str(IMAGE), "-i", str(IMAGE), "-r", run_id, "--tracking-uri", uri,
              "-k", "3", "--ten-crop")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0] == str(IMAGE) and len(lines) == 8
    probs = [float(re.match(r"\s+([\d.]+)%", l).group(1)) for l in lines[1:4]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.05
    assert any("(n0" in l for l in lines[1:4])          # WordNet ids shown with their names
    assert "tench (n01440764)" in res.stdout or "(n0" in lines[1]


def test_weights_file_and_broken_inputs(cell, tmp_path):
    uri, tmp, run_id = cell
    weights = mlflow.MlflowClient(uri).download_artifacts(run_id, "model/weights.pt", str(tmp_path))
    ok = cli("classify_image.py", "-i", str(IMAGE), "-w", weights, "-k", "1")
    assert ok.returncode == 0 and "%" in ok.stdout
    bad_arch = tmp_path / "other.pt"
    bundle = torch.load(weights, weights_only=True)
    bundle["config"]["toggles"]["groups"] = 1               # a file whose weights are of another architecture
    torch.save(bundle, bad_arch)
    bare = tmp_path / "bare.pt"
    torch.save(bundle["state_dict"], bare)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    cases = [(["-i", str(IMAGE), "-w", str(tmp_path / "missing.pt")], "not found"),
             (["-i", str(tmp_path / "nope.jpg"), "-w", weights], "image"),
             (["-i", str(not_an_image), "-w", weights], "pass an image file"),
             (["-i", str(IMAGE), "-w", str(bad_arch)], "do not fit the architecture"),
             (["-i", str(IMAGE), "-w", str(bare)], "bare weights"),
             (["-i", str(IMAGE), "-w", str(not_an_image)], "not a weights file"),
             (["-i", str(IMAGE), "-r", "0" * 32, "--tracking-uri", uri], "no run"),
             (["-i", str(IMAGE), "-r", run_id, "--tracking-uri", f"sqlite:///{tmp_path}/none.db"], "no MLflow store")]
    res = cli("classify_image.py", *cases[3][0])   # one as a command: one line, no traceback
    assert res.returncode == 2 and cases[3][1] in res.stderr and "Traceback" not in res.stderr, res.stderr
    for args, expected in cases:                     # the rest in this process (no torch import each)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = classify_image.main(args)
        assert code == 2 and expected in err.getvalue(), (args, err.getvalue())
    assert not (tmp_path / "none.db").exists()
