"""report.py on a small factorial grid (2^2 x 2 seeds on the tiny image folder), end to end
through MLflow: the factorial section and the outcome counts come out of the stored runs."""
from __future__ import annotations

import subprocess
import sys

import mlflow

from conftest import REPO

YAML = """
profiles:
  tiny: {image_size: 32, width: 0.125, stem: [5, 2, 1], batch_size: 8, epoch_scale: 0.0223, eval_batch_size: 64}
grids:
  mini-factorial:
    factorial: {lrn: [true, false], overlap_pool: [true, false]}
"""


def test_factorial_report(tmp_path, tiny_imagefolder):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(YAML)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["--tracking-uri", uri, "--experiment", "fact"]
    res = subprocess.run([sys.executable, "run_ablation.py", "--config", str(cfg), "--grid", "mini-factorial",
                          "--profile", "tiny", "--seeds", "2", "--data-root", str(tiny_imagefolder),
                          "--cache-dir", str(tmp_path / "cache"), "--no-system-metrics", *common],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "fact.md"
    res = subprocess.run([sys.executable, "report.py", "--grid", "mini-factorial", "--out", str(out), *common],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    md = out.read_text()
    assert "## Factorial effects" in md          # effects, or why they cannot be fitted
    assert "| `lrn` |" in md and "| `overlap_pool` |" in md   # learned k/n per level
    assert "## Outcomes" in md and "**Complete**" in md
    mlflow.set_tracking_uri(uri)
    cells = mlflow.search_runs(experiment_names=["fact"]).query("`tags.role` == 'cell'")
    assert len(cells) == 8 and cells["tags.variant"].nunique() == 4
