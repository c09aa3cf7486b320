"""Does the engine train on this machine's GPU? `python -m tools.gpucheck [--device cuda]`

Runs core.engine.train for two epochs on synthetic uint8 images (smoke-sized model) for the paper
baseline and each toggle flipped alone, on the given device, with an in-memory tracker; prints one
line per variant and exits non-zero if any fails. Needs no dataset, MLflow or albumentations.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from core.config import Profile, RunConfig
from core.data import Split, train_stats
from core.engine import Data, train
from core.toggles import REGISTRY, make_toggles
from core.tracking import MemoryTracker


def synthetic(n: int, prep: int, classes: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    # class-dependent colour so the network has something to learn
    base = (labels[:, None] * 70 % 256)[:, :, None, None] + rng.integers(0, 60, (n, 3, prep, prep))
    images = np.clip(base, 0, 255).astype(np.uint8)
    return Split(images, labels.astype(np.int64), tuple(f"c{i}" for i in range(classes)), "synthetic", "synthetic")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    args = ap.parse_args(argv)
    profile = Profile("gpucheck", image_size=32, width=0.125, stem=(5, 2, 1), batch_size=64,
                      epoch_scale=2 / 90, precision=args.precision)
    train_split = synthetic(512, profile.prep_size, 4, 0)
    data = Data(train_split, synthetic(256, profile.prep_size, 4, 1), train_stats(train_split))
    variants = [("baseline", {})] + [(f"{t.name}={v}", {t.name: v}) for t in REGISTRY.values()
                                     for v in t.deviations if not (t.name == "output_bias")]
    variants.append(("output_bias=seed", {"output_bias": "seed"}))
    variants.append(("baseline, torch.compile", None))
    failed = 0
    for name, flips in variants:
        cfg = RunConfig(profile if flips is not None else replace(profile, compile=True), make_toggles(flips), seed=0)
        t0 = time.perf_counter()
        try:
            with MemoryTracker().child(name, {}, {}) as run:
                res = train(cfg, data, run, device=args.device)
            print(f"ok    {name:28s} {res.outcome:8s} val10 top-1 {res.metrics.get('val10_top1_err', float('nan')):.3f} "
                  f"{time.perf_counter() - t0:5.1f} s", flush=True)
        except Exception as err:   # report every variant, then fail
            failed += 1
            print(f"FAIL  {name:28s} {type(err).__name__}: {err}", flush=True)
    print(f"{len(variants) - failed}/{len(variants)} variants trained on {args.device} "
          f"({torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
