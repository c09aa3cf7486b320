"""One cell over two processes: `torchrun --nproc_per_node=2 run_ablation.py ...` (gloo on the
CPU) trains what one process trains, up to floating-point noise, and logs it once."""
from __future__ import annotations

import subprocess
import sys

import mlflow
import torch

from conftest import REPO
from test_bad_input import run_cli

# batch 5 over 18 training images: batches of 5, 5, 5 and 3 (the last split 1 + 2 between the ranks)
EXPERIMENTS = """
baseline: {}
profiles:
  tiny:
    dataset: imagenette
    image_size: 32
    width: 0.125
    stem: [5, 2, 1]
    batch_size: 5
    lr: 0.01
    epoch_scale: 0.034
    eval_batch_size: 4
    precision: fp32        # the same on every machine: bf16 rounds the two reductions apart
grids:
  one:
    base: {}
"""


def train(tmp_path, root, store: str, launcher: list[str]):
    (tmp_path / "experiments.yaml").write_text(EXPERIMENTS)
    cmd = [*launcher, "run_ablation.py", "--config", str(tmp_path / "experiments.yaml"), "--grid", "one",
           "--profile", "tiny", "--data-root", str(root), "--cache-dir", str(tmp_path / "cache"),
           "--tracking-uri", f"sqlite:///{tmp_path}/{store}/mlflow.db", "--no-system-metrics"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "ALEXNET_THREADS": "1", "HOME": str(tmp_path),
                              "ALEXNET_LRN_KERNEL": "eager"})   # no kernel compile in each process
    assert res.returncode == 0, res.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/{store}/mlflow.db")
    exp = client.get_experiment_by_name("alexnet-deviations")
    found = client.search_runs([exp.experiment_id])
    cells = {r.data.tags["config_hash"]: r for r in found if r.data.tags.get("role") == "cell"}
    assert len(found) == len(cells) + 1 == 2                       # one parent, one run per cell: rank 0 logs
    return client, cells, res.stderr


def weights(client, run, tmp_path):
    path = client.download_artifacts(run.info.run_id, "model/weights.pt", str(tmp_path))
    return torch.load(path, weights_only=True)["state_dict"]


def test_torchrun_with_two_processes_trains_what_one_process_trains(tmp_path, tiny_imagefolder):
    one_client, one, _ = train(tmp_path, tiny_imagefolder, "one", [sys.executable])
    two_client, two, err = train(tmp_path, tiny_imagefolder, "two",
                                 [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])
    assert "x 2 processes" in err
    assert one.keys() == two.keys()                                # the same cells (config_hash)
    for h, a in one.items():
        b = two[h]
        assert (a.data.params["processes"], b.data.params["processes"]) == ("1", "2")
        for key in ("train_loss", "val_top1_err", "val_top5_err"):
            ha = [m.value for m in sorted(one_client.get_metric_history(a.info.run_id, key), key=lambda m: m.step)]
            hb = [m.value for m in sorted(two_client.get_metric_history(b.info.run_id, key), key=lambda m: m.step)]
            assert len(ha) == len(hb) == int(a.data.params["epochs_run"]) >= 3
            assert torch.allclose(torch.tensor(ha), torch.tensor(hb), rtol=1e-4, atol=1e-5), (key, ha, hb)
        wa, wb = weights(one_client, a, tmp_path / "a" / h), weights(two_client, b, tmp_path / "b" / h)
        for name in wa:   # every weight moved the same way: gradients, dropout masks and decay agree
            assert torch.allclose(wa[name], wb[name], rtol=1e-4, atol=1e-6), name


def test_torchrun_and_workers_do_not_mix(tmp_path, tiny_imagefolder):
    res, _ = run_cli(tmp_path, "--grid", "deviations", "--data-root", str(tiny_imagefolder), "--workers", "2",
                  env_extra={"WORLD_SIZE": "2"})
    assert res.returncode == 2 and "under torchrun" in res.stderr and "drop --workers" in res.stderr
