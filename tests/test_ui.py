"""The MLflow UI opens on the comparison: a real `mlflow server` on a smoke grid's store, and the
runs link that run_ablation.py printed, loaded in headless Chromium, shows the grid's runs table
(the model-training view, not the GenAI overview)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest

from conftest import mlflow_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(smoke_store):
    uri, tmp, stderr = smoke_store
    with mlflow_server("--backend-store-uri", uri, "--default-artifact-root", str(tmp / "artifacts")) as url:
        yield int(url.rsplit(":", 1)[1]), stderr


def render(url: str, tmp_path, *extra: str) -> str:
    assert CHROMIUM, "headless Chromium is needed (Debian package chromium; .ci/run installs it)"
    res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=20000", *extra, url],
                         capture_output=True, text=True, timeout=180)
    return res.stdout


def test_the_printed_link_opens_the_runs_table(server, tmp_path):
    port, stderr = server
    link = re.search(r"^runs:\s+(\S+)", stderr, re.M).group(1)
    assert link.endswith("?workflowType=machine_learning")
    page = render(link.replace("http://127.0.0.1:5000", f"http://127.0.0.1:{port}"), tmp_path, "--dump-dom")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    assert "Runs - Experiment" in page
    assert "Model training" in text and "15 matching runs" in text    # 14 cells and their parent
    assert "deviations-smoke-" in text                                  # the grid's parent run, its cells nested
    parent = re.search(r"^parent: (\S+)", stderr, re.M).group(1)
    page = render(parent.replace("http://127.0.0.1:5000", f"http://127.0.0.1:{port}"), tmp_path, "--dump-dom")
    assert "deviations-smoke-" in re.sub(r"<[^>]+>", " ", page)


def test_the_printed_curves_link_compares_every_cell(server, tmp_path):
    port, stderr = server
    link = re.search(r"^curves:\s+(\S+)", stderr, re.M).group(1)
    assert "x_axis=step" in link and "val_top1_err" in link
    page = render(link.replace("http://127.0.0.1:5000", f"http://127.0.0.1:{port}"), tmp_path, "--dump-dom")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    assert "Comparing 14 Runs from 1 Experiment" in text                # every cell, not the parent
    assert "baseline/seed0" in text and "val_top1_err" in text


def test_links_point_at_the_server_or_at_mlflow_ui():
    from core.tracking import curves_url, ui_url
    assert ui_url("sqlite:////tmp/x.db", "3") == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    assert ui_url("http://host:8080/", "3", "abc") == "http://host:8080/#/experiments/3/runs/abc"
    link = curves_url("http://host:8080", "3", ["a1", "b2"], "lr")
    assert link.startswith("http://host:8080/#/metric?")
    query = urllib.parse.parse_qs(link.split("?", 1)[1])
    assert json.loads(query["runs"][0]) == ["a1", "b2"] and json.loads(query["metric"][0]) == "lr"
    assert json.loads(query["experiments"][0]) == ["3"] and query["x_axis"] == ["step"]
