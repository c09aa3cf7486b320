"""core/checkpoint.py and resuming in core/engine.train: atomic checkpoints, the previous one kept,
a broken newest one skipped, locks that die with their process, and a resumed cell that ends
exactly as an uninterrupted one on the CPU."""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, tiny_profile
from core.checkpoint import Busy, Checkpoints, is_locked, rng_state, set_rng_state
from core.config import RunConfig
from core.engine import train
from core.toggles import make_toggles
from core.tracking import MemoryTracker

TIMING = {"epoch_time_s", "images_per_s", "wall_time_s"}


def test_save_is_atomic_and_keeps_the_previous_one(tmp_path):
    ck = Checkpoints(tmp_path / "cell")
    for epoch in range(1, 5):
        ck.save(epoch, {"w": torch.full((3,), float(epoch))})
    assert [e for e, _ in ck.files()] == [4, 3]
    assert sorted(p.name for p in (tmp_path / "cell").iterdir()) == ["epoch-3.pt", "epoch-4.pt"]   # no temp files
    state = ck.latest()
    assert state["epoch"] == 4 and torch.equal(state["w"], torch.full((3,), 4.0))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_broken_newest_checkpoint_falls_back_to_the_one_before(tmp_path, damage):
    ck = Checkpoints(tmp_path / "cell")
    ck.save(1, {"w": torch.ones(1000)})
    newest = ck.save(2, {"w": torch.zeros(1000)})
    data = newest.read_bytes()
    newest.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[damage])
    with pytest.warns(RuntimeWarning, match="epoch-2.pt is unreadable"):
        state = ck.latest()
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(1000))


def test_checkpoints_load_with_weights_only(tmp_path):
    ck = Checkpoints(tmp_path / "cell")
    ck.folder.mkdir()
    torch.save({"epoch": 1, "obj": argparse.Namespace(code="anything")}, ck.folder / "epoch-1.pt")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert ck.latest() is None          # an arbitrary object is not unpickled
    assert Checkpoints(tmp_path / "none").latest() is None


def test_rng_state_round_trips():
    state = rng_state()
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    set_rng_state(state)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_a_cell_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    ck = Checkpoints(tmp_path / "cell")
    with ck.claim():
        assert is_locked(ck.lock_path)
        with pytest.raises(Busy):
            with ck.claim():
                pass
    assert not is_locked(ck.lock_path)
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from core.checkpoint import Checkpoints
with Checkpoints({str(ck.folder)!r}).claim():
    print("held", flush=True)
    time.sleep(60)
"""], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert is_locked(ck.lock_path)
    holder.send_signal(signal.SIGKILL)                       # no chance to clean up
    holder.wait(timeout=30)
    deadline = time.time() + 10
    while is_locked(ck.lock_path) and time.time() < deadline:
        time.sleep(0.1)
    assert not is_locked(ck.lock_path)


class Stop(KeyboardInterrupt):
    pass


def stop_at(epoch):
    def on_epoch(e, metrics):
        if e == epoch:
            raise Stop
    return on_epoch


@pytest.mark.parametrize("every, stop", [(1, 3), (2, 3)])
def test_a_resumed_cell_ends_exactly_as_an_uninterrupted_one(tmp_path, shared_tiny_data, every, stop, monkeypatch):
    """Paper schedule with patience 1 (lr drops happen), momentum, dropout: all state must come back.
    Stopped after epoch `stop` with a checkpoint every `every` epochs: at most one epoch recomputed.
    The thread count is pinned: another count sums floats in another order."""
    monkeypatch.setenv("ALEXNET_THREADS", "1")
    cfg = RunConfig(dataclasses.replace(tiny_profile(), epoch_scale=6 / 90), make_toggles({}), seed=4)
    tracker = MemoryTracker()
    with tracker.child("whole", {}, {}) as whole:
        train(cfg, shared_tiny_data, whole, device="cpu")
    ck = Checkpoints(tmp_path / "cell", every)
    with pytest.raises(Stop):
        with tracker.child("cut", {}, {}) as cut:
            train(cfg, shared_tiny_data, cut, device="cpu", checkpoints=ck, on_epoch=stop_at(stop))
    assert cut.status == "KILLED" and ck.files()[0][0] == stop - stop % every
    with tracker.child("cut", {}, {}, resume=cut.run_id) as again:
        result = train(cfg, shared_tiny_data, again, device="cpu", checkpoints=ck)
    assert again is cut and cut.status == "FINISHED" and result.resumed_from == stop - stop % every
    lrs = [v for _, v in whole.metrics["lr"]]
    assert len(set(lrs)) > 1, "the schedule should drop the lr in this test"
    assert whole.metrics.keys() == cut.metrics.keys()
    for key in whole.metrics.keys() - TIMING:
        assert cut.metrics[key] == whole.metrics[key], key           # same steps, same values, none twice
    assert [s for s, _ in cut.metrics["epoch_time_s"]] == list(range(1, cfg.epochs + 1))
    a, b = whole.artifacts["model/weights.pt"]["state_dict"], cut.artifacts["model/weights.pt"]["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
