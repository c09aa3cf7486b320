"""End to end: the `smoke` profile's deviations grid on real Imagenette images into a temporary
MLflow store, checked against the logging contract; resume; report.py on those runs."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import REPO, SHARED, cli
from core.toggles import NAMED, REGISTRY

EPOCH_METRICS = ("train_loss", "lr", "val_top1_err", "val_top5_err", "epoch_time_s", "images_per_s")


@pytest.fixture
def store(smoke_store):
    return smoke_store


def runs(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["alexnet-deviations"], max_results=1000)


def test_one_parent_and_a_nested_child_per_variant_and_seed(store):
    uri, _, _ = store
    df = runs(uri)
    parents = df[df["tags.role"] == "grid"]
    children = df[df["tags.role"] == "cell"]
    assert len(parents) == 1 and len(children) == 14
    assert set(children["tags.mlflow.parentRunId"]) == {parents["run_id"].iloc[0]}
    expected = {f"{v}/seed{k}" for k in (0, 1) for v in
                ("baseline", "init=pytorch", "pca=fancy_pca", "lr_schedule=plateau", "epochs=seed", "lrn=false",
                 "overlap_pool=false")}
    assert set(children["tags.mlflow.runName"]) == expected
    assert set(df["status"]) == {"FINISHED"}


def test_child_params_and_tags(store):
    uri, _, _ = store
    children = runs(uri).query("`tags.role` == 'cell'")
    for _, r in children.iterrows():
        for p in NAMED + ("seed", "profile", "dataset", "image_size", "width", "batch_size", "lr"):
            assert isinstance(r[f"params.{p}"], str), p
        assert r["params.profile"] == "smoke" and r["params.dataset"] == "imagenette"
        assert r["params.image_size"] == "32" and r["params.batch_size"] == "32"
        assert r["tags.grid"] == "deviations"
        for name, toggle in REGISTRY.items():   # every toggle's param holds one of its values, nothing else
            assert r[f"params.{name}"] in {str(c) for c in toggle.choices}, name
        assert r["tags.mlflow.runName"] == f"{r['tags.variant']}/seed{r['params.seed']}"
        flipped = r["tags.variant"]
        for name in NAMED:   # exactly one toggle differs from the paper, the one the variant names
            paper = {"init": "paper", "pca": "paper", "lr_schedule": "paper", "epochs": "paper", "lrn": "True",
                     "overlap_pool": "True"}[name]
            assert (r[f"params.{name}"] != paper) == flipped.startswith(name + "="), (flipped, name)
    assert children["tags.config_hash"].nunique() == 14
    assert set(children.query("`tags.variant` == 'epochs=seed'")["params.epochs_run"]) == {"3"}   # 120 * scale
    assert set(children.query("`tags.variant` == 'baseline'")["params.epochs_run"]) == {"2"}


def test_config_hash_is_the_resolved_config(store):
    from ablations.runner import plan
    from core.config import load_experiments
    uri, _, _ = store
    children = runs(uri).query("`tags.role` == 'cell'")
    from ablations.runner import load_data
    ex = load_experiments(REPO / "experiments.yaml")
    data = load_data(ex.profile("smoke"), str(SHARED), str(store[1] / "cache"))
    cells = plan(ex, "deviations", "smoke", 2, "cpu", data)
    assert {c.config.hash() for c in cells} == set(children["tags.config_hash"])


def test_per_epoch_and_final_metrics(store):
    uri, _, _ = store
    client = mlflow.MlflowClient(uri)
    children = runs(uri).query("`tags.role` == 'cell'")
    for _, r in children.iterrows():
        epochs = int(r["params.epochs_run"])
        for key in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(r["run_id"], key)]
            assert steps == list(range(1, epochs + 1)), (key, steps)
        for key in ("val10_top1_err", "val10_top5_err"):
            v = r[f"metrics.{key}"]
            assert 0.0 <= v <= 1.0
        assert r["metrics.val_top5_err"] <= r["metrics.val_top1_err"]
        assert r["tags.outcome"] in ("learned", "late_start", "chance", "diverged")
        assert 0 <= r["metrics.epochs_at_chance"] <= epochs


def test_artifacts_and_dataset_input(store):
    uri, _, _ = store
    client = mlflow.MlflowClient(uri)
    r = runs(uri).query("`tags.role` == 'cell'").iloc[0]
    names = {a.path for a in client.list_artifacts(r["run_id"])}
    assert "config.yaml" in names and "model" in names
    assert [a.path for a in client.list_artifacts(r["run_id"], "model")] == ["model/weights.pt"]
    cfg = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(run_id=r["run_id"], artifact_path="config.yaml",
                                                                  tracking_uri=uri)).read_text())
    assert cfg["seed"] == int(r["params.seed"]) and cfg["profile"]["name"] == "smoke"
    inputs = client.get_run(r["run_id"]).inputs.dataset_inputs
    assert len(inputs) == 1 and len(inputs[0].dataset.digest) == 16


def test_resume_skips_finished_cells(store):
    uri, tmp, _ = store
    before = len(runs(uri))
    res = cli("run_ablation.py", "--grid", "deviations", "--profile", "smoke", "--seeds", "2",
              "--tracking-uri", uri, "--cache-dir", str(tmp / "cache"), "--data-root", str(SHARED))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "done: 0 trained (0 resumed from a checkpoint), 14 already finished" in res.stderr
    assert len(runs(uri)) == before


def test_report_from_mlflow(store):
    uri, tmp, _ = store
    out = tmp / "report.md"
    res = cli("report.py", "--grid", "deviations", "--tracking-uri", uri, "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    md = out.read_text()
    children = runs(uri).query("`tags.role` == 'cell'")
    base = children.query("`tags.variant` == 'baseline'")
    # what MLflow holds: the outcomes counted, the median of all runs with n
    learned = int((base["tags.outcome"] == "learned").sum())
    assert f"| `baseline` | {learned}/2 |" in md
    assert f"{100 * base['metrics.val10_top1_err'].median():.1f} (n=2)" in md
    for variant in children["tags.variant"].unique():
        assert f"`{variant}`" in md
    for run_id in children["run_id"]:
        assert run_id in md
    for png in ("learning_curves.png", "effects.png", "lr.png"):
        assert (tmp / "report" / png).stat().st_size > 5000
    assert "The paper's claims at this scale" in md and "not ImageNet" in md and "**Complete**" in md
    # logged to the parent run too
    parent = runs(uri).query("`tags.role` == 'grid'").iloc[0]
    assert mlflow.MlflowClient(uri).list_artifacts(parent["run_id"], "report")


def test_report_keeps_the_latest_run_when_a_profile_changed(tmp_path, tiny_imagefolder):
    """Editing a profile between runs gives each (variant, seed) a second config_hash; the report
    counts the latest run once and says how many older ones it left out."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    edited = tmp_path / "experiments.yaml"
    text = (REPO / "experiments.yaml").read_text()
    assert "    lr: 0.01\n    epoch_scale: 0.0223" in text
    edited.write_text(text.replace("    lr: 0.01\n    epoch_scale: 0.0223", "    lr: 0.02\n    epoch_scale: 0.0223"))
    common = ("--grid", "seed", "--profile", "smoke", "--seeds", "1", "--tracking-uri", uri,
              "--cache-dir", str(tmp_path / "cache"), "--data-root", str(tiny_imagefolder), "--no-system-metrics")
    for config in (REPO / "experiments.yaml", edited):
        res = cli("run_ablation.py", *common, "--config", str(config))
        assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "report.md"
    res = cli("report.py", "--grid", "seed", "--profile", "smoke", "--tracking-uri", uri, "--out", str(out), "--no-log")
    assert res.returncode == 0, res.stderr[-2000:]
    report = out.read_text()
    assert "2 finished cells" in report and "2 older run(s) of a variant and seed under another config" in report
    assert "lr 0.02" in report


def test_report_on_a_missing_store_or_experiment_writes_nothing(tmp_path):
    db = tmp_path / "none.db"
    res = cli("report.py", "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "r.md"))
    assert res.returncode == 2 and "no MLflow store at" in res.stderr
    assert not db.exists() and not (tmp_path / "r.md").exists()


def test_report_names_the_experiments_that_are_there(store):
    uri, tmp, _ = store
    res = cli("report.py", "--tracking-uri", uri, "--experiment", "nope", "--out", str(tmp / "x.md"))
    assert res.returncode == 2 and "no experiment 'nope'" in res.stderr and "alexnet-deviations" in res.stderr
    assert not (tmp / "x.md").exists()
    res = cli("report.py", "--tracking-uri", uri, "--out", str(tmp / "noext"))
    assert res.returncode == 2 and "ending in .md" in res.stderr
