"""Training images/s with the batches streamed from disk against the cache held in memory (on a
GPU: in GPU memory), on a synthetic ImageNet-like set written to disk first (never committed).

    python -m tools.streambench --profile cpu                         # 20,000 JPEGs of 1000 classes
    python -m tools.streambench --profile paper --device cuda --epochs 3 --json results/gpu/stream.json

Before every streamed epoch the cache file is dropped from the page cache (madvise and
posix_fadvise DONTNEED), so each reads from the disk, as when the cache does not fit in RAM;
before the in-memory ones it is read once. First the reader alone reads one epoch from the
disk (what the disk and the reader can deliver, no training); then each path trains
the same run (`input: memory` / `input: stream`, everything else equal); the last epoch's
training images/s is compared.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import mmap
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core import runtime, stream
from core.config import REPO, RunConfig, load_experiments
from ablations.runner import load_data
from core.engine import resolve_device, train
from core.toggles import make_toggles
from core.tracking import MemoryTracker
from tools import fakedata


def evict(images: np.memmap) -> None:
    """Drop the cache file's pages: from this process's mapping, then from the page cache."""
    images._mmap.madvise(mmap.MADV_DONTNEED)
    fd = os.open(images.filename, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(images: np.memmap) -> None:
    for i in range(0, len(images), 4096):
        np.asarray(images[i:i + 4096]).sum()


def read_rate(images: np.memmap, batch_size: int, device: torch.device) -> float:
    """Images/s the streaming reader alone delivers from disk: one epoch's batches in a random
    order, read ahead as in training, with nothing else running."""
    order = np.random.default_rng(0).permutation(len(images))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    t0 = time.perf_counter()
    with stream.Reader(images, pin=device.type == "cuda") as reader:
        for _ in reader.batches(batches):
            pass
    return len(order) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", help="profile whose geometry is trained (default cpu)")
    ap.add_argument("--data", type=Path, help="an ImageFolder to use (default: a synthetic one in a temp folder)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--per-class", type=int, default=20, help="training JPEGs per class (default 20)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per path; the last is reported (default 2)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="write the result here too")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="streambench-"))
    try:
        return measure(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)   # the synthetic JPEGs and their cache


def measure(a, work: Path) -> int:
    root = a.data
    if root is None:
        root = work / "data"
        t0 = time.perf_counter()
        n = fakedata.write(root, a.classes, a.per_class, 1)
        print(f"wrote {n} JPEGs in {time.perf_counter() - t0:.0f} s to {root}", flush=True)
    prof = load_experiments(REPO / "experiments.yaml").profile(a.profile)
    t0 = time.perf_counter()
    data = load_data(prof, str(root), str(work / "cache"))
    train_split = data.train
    print(f"cache: {len(train_split.labels)} images at {prof.prep_size} px, {train_split.images.nbytes / 2 ** 30:.2f} GiB, "
          f"built in {time.perf_counter() - t0:.0f} s", flush=True)
    device = resolve_device(a.device)
    out = {"machine": runtime.machine(), "profile": a.profile, "device": str(device),
           "train_images": len(train_split.labels), "cache_gib": train_split.images.nbytes / 2 ** 30}
    evict(train_split.images)
    out["reader_alone"] = read_rate(train_split.images, prof.batch_size, device)
    print(f"reader alone: {out['reader_alone']:8.1f} images/s from disk (one epoch's batches, no training)", flush=True)
    for path in ("memory", "stream"):
        (evict if path == "stream" else warm)(train_split.images)
        p = dataclasses.replace(prof, input=path, epoch_scale=a.epochs / 90)
        with MemoryTracker().child(path, {}, {}) as run:
            train(RunConfig(p, make_toggles({}), seed=0), data, run, device=a.device,
                  on_epoch=(lambda e, m: evict(train_split.images)) if path == "stream" else None)
        out[path] = run.metrics["images_per_s"][-1][1]
        print(f"{path:6s}: {out[path]:8.1f} training images/s (epoch {a.epochs})", flush=True)
    out["stream_over_memory"] = out["stream"] / out["memory"]
    print(f"stream/memory {out['stream_over_memory']:.3f} on {runtime.describe(out['machine'])}, {device}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
