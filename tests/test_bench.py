"""tools.bench in its quickest mode on a tiny synthetic ImageFolder (a few seconds on a CPU)."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core import runtime
from tools import bench
from core.lrn import LRN

TINY_YAML = """
baseline: {}
profiles:
  tiny:
    dataset: imagenette
    image_size: 32
    width: 0.125
    stem: [5, 2, 1]
    batch_size: 8
    eval_batch_size: 8
grids:
  none: {description: unused}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two classes of random JPEGs (train 12 each, val 4 each) and an experiments file."""
    tmp = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 4)):
        for wnid in ("n01", "n02"):
            folder = tmp / "data" / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    (tmp / "experiments.yaml").write_text(TINY_YAML)
    return tmp


def test_quick_run_prints_and_returns_ratios(tiny, capsys, monkeypatch):
    monkeypatch.setenv("ALEXNET_THREADS", str(torch.get_num_threads()))   # main() sets the thread count
    out = tiny / "bench.json"
    rc = bench.main(["--config", str(tiny / "experiments.yaml"), "--profile", "tiny", "--data-root",
                     str(tiny / "data"), "--cache-dir", str(tiny / "cache"), "--device", "cpu", "--quick",
                     "--skip", "compile", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for label in ("harness/plain", "harness/compute", "harness/roofline", "LRN overhead",
                  "channels_last / contiguous", "bf16 autocast / fp32", "MLflow logging"):
        assert label in text
    res = json.loads(out.read_text())
    # the compute row in the precision the profile did not resolve to (bf16 where it is native)
    other = "compute_fp32" if res["setting"]["precision"] == "bf16" else "compute_bf16"
    assert res["setting"]["precision"] == ("bf16" if runtime.native_bf16(torch.device("cpu")) else "fp32")
    for key in ("harness", "plain", "compute", "compute_no_lrn", "compute_torch_lrn", "compute_plain_lrn",
                "compute_contiguous", other, "eval"):
        assert res["rows"][key]["error"] == "", res["rows"][key]["error"]
        assert res["rows"][key]["images_per_s"] > 0
    for key in ("harness/plain", "harness/compute", "harness/roofline", "lrn_overhead_core",
                "lrn_overhead_torch", "lrn_overhead_plain", "channels_last/contiguous", "bf16/fp32", "mlflow_overhead"):
        assert res["ratios"][key] is not None and math.isfinite(res["ratios"][key]), key
    assert res["ratios"]["compile/eager"] is None   # skipped
    assert res["roofline"]["train_gflop_per_image"] > 0
    # the machine first, in the text and the JSON; the harness in two processes at once
    assert text.lstrip().startswith("machine: ") and res["setting"]["machine"]["cpu_kind"] in text
    assert res["setting"]["machine"]["cpus"] >= 1 and "torch" in res["setting"]["machine"]
    assert "error" not in res["processes"], res["processes"]
    assert len(res["processes"]["images_per_s_each"]) == 2 and res["processes"]["images_per_s_total"] > 0
    assert "2 processes at once" in text


def test_swap_lrn_keeps_the_paper_strength():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), LRN(5, 1e-4, 0.75, 2.0))
    x = torch.randn(2, 3, 9, 9) * 30
    expected = model(x)
    bench.swap_lrn(model)
    assert isinstance(model[1], nn.LocalResponseNorm) and model[1].alpha == pytest.approx(5e-4)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_gpu_synthetic_without_cuda_fails_clearly(capsys):
    assert bench.main(["--gpu-synthetic", "--quick"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_bad_skip_is_refused(capsys):
    assert bench.main(["--skip", "nonsense", "--quick"]) == 2
    assert "choices" in capsys.readouterr().err


def test_interleaved_rounds_share_the_time_and_survive_a_failing_row():
    """Every row gets a slice in every round, in turn; a row that raises gets its error and the
    others still finish all their rounds."""
    order = []

    def loop(name, fail_at=None):
        def run(batches, call):
            order.append((name, call))
            if fail_at is not None and call == fail_at:
                raise RuntimeError("boom")
            time.sleep(0.001 * batches)
            return 4 * batches
        return bench.Loop(name, 4, run)
    budget = bench.Budget(seconds=0.06, warmup=1, chunk=2, rounds=3)
    rows = bench.time_interleaved([loop("a"), loop("b", fail_at=2), loop("c")], budget, torch.device("cpu"))
    assert "boom" in rows["b"].error and rows["b"].round_ips == []
    for name in ("a", "c"):
        assert rows[name].error == "" and len(rows[name].round_ips) == 3 and rows[name].ips > 0
        assert rows[name].note.startswith("median of 3 rounds")
    timed = [name for name, call in order if call > 0]
    first = [timed.index(n) for n in ("a", "b", "c")]
    assert first == sorted(first)                        # warm-ups, then round 1 in order a, b, c
    assert [call for name, call in order if name == "b"] == [0, 1, 2]   # warm-up, ok, failed; then left out


def test_bad_rounds_is_refused(capsys):
    assert bench.main(["--rounds", "0", "--quick"]) == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err
