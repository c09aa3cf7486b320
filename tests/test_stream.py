"""The streaming input path: batches read from the cache file on background threads give exactly
the rows, and so exactly the run, of the in-memory path; a truncated cache file is one clear error."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import tiny_profile
from core import stream
from core.config import ConfigError, RunConfig
from core.toggles import make_toggles
from test_determinism import run_once


def test_the_reader_reads_the_rows_asked_for_in_that_order(tiny_data):
    images = tiny_data.train.images
    assert isinstance(images, np.memmap)
    rng = np.random.default_rng(0)
    orders = [rng.permutation(len(images))[:k] for k in (5, 7, 1, 18)]
    with stream.Reader(images, depth=2, threads=3, chunk=2) as reader:     # batches split over threads
        for idx, batch in zip(orders, reader.batches(iter(orders))):
            assert batch.dtype == torch.uint8 and np.array_equal(batch.numpy(), images[idx])


def test_streaming_trains_exactly_what_the_in_memory_path_trains(tiny_data):
    p = dataclasses.replace(tiny_profile(), epoch_scale=2 / 90, batch_size=5)
    runs = {path: run_once(RunConfig(dataclasses.replace(p, input=path), make_toggles({}), seed=2), tiny_data)
            for path in ("memory", "stream")}
    for key in ("train_loss", "val_top1_err", "val10_top1_err"):
        assert runs["memory"][key] == runs["stream"][key], key
    assert RunConfig(dataclasses.replace(p, input="stream"), make_toggles({}), 2).hash() == \
        RunConfig(dataclasses.replace(p, input="memory"), make_toggles({}), 2).hash()      # one cell either way


def test_auto_keeps_a_cache_that_fits_in_memory(tiny_data):
    assert stream.resolve("auto", tiny_data.train.images, torch.device("cpu")) == "memory"
    assert stream.resolve("stream", tiny_data.train.images, torch.device("cpu")) == "stream"
    assert stream.resolve("auto", np.zeros((2, 3, 4, 4), np.uint8), torch.device("cpu")) == "memory"


def test_a_truncated_cache_file_is_a_clear_error(tiny_data, tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.asarray(tiny_data.train.images))
    images = np.load(path, mmap_mode="r")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with stream.Reader(images) as reader, pytest.raises(OSError, match="truncated; delete its cache folder"):
        reader.read(np.array([len(images) - 1]))


def test_an_unknown_input_is_refused():
    with pytest.raises(ConfigError, match="input 'ram' unknown; choices: auto, memory, stream"):
        dataclasses.replace(tiny_profile(), input="ram")


def test_the_stream_benchmark_runs_end_to_end_on_synthetic_jpegs(tmp_path):
    import json
    from tools import streambench
    out = tmp_path / "stream.json"
    assert streambench.main(["--profile", "smoke", "--classes", "3", "--per-class", "6", "--epochs", "1",
                             "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["train_images"] == 18 and res["memory"] > 0 and res["stream"] > 0
    assert res["stream_over_memory"] == res["stream"] / res["memory"]


def test_read_only_cache_becomes_a_tensor_without_a_warning(tmp_path):
    """A cache opened read-only (as `on_device` gets it) becomes a tensor silently and unchanged;
    torch's non-writable warning is once per process, so a fresh process checks it."""
    import subprocess
    import sys
    from core.config import REPO
    path = tmp_path / "cache.npy"
    np.save(path, np.arange(24, dtype=np.uint8).reshape(2, 3, 2, 2))
    code = ("import numpy as np, sys; from core.engine import host_tensor; "
            f"a = np.load({str(path)!r}, mmap_mode='r'); t = host_tensor(a); "
            "assert t.dtype.is_floating_point is False and t.tolist() == a.tolist(); print('ok')")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
