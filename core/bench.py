"""Speed benchmark: the harness's training loop next to a seed-style loop, the bare compute, and
the matmul roofline, all on the same model size, data and machine.

    python -m core.bench --profile cpu                  # table + ratios, ~20 s per measurement
    python -m core.bench --profile cpu --quick          # 2 timed batches per measurement (smoke check)
    python -m core.bench --profile cpu --batches 74     # 74 batches each (cpu: the harness's whole epoch)
    python -m core.bench --profile cpu --json out.json  # also write the results as JSON
    python -m core.bench --gpu-synthetic                # paper-size AlexNet on CUDA, synthetic images

Rows of the CPU table (every training row: forward, backward and SGD step of the profile's batch):
  (a) harness   core.engine.train_one_epoch over the real uint8 cache: memmap reads, batched crop /
                flip / lighting (core.augment.Pipeline), the profile's layout and precision.
  (b) plain     the seed's style: torch DataLoader (2 workers) over the JPEGs; per sample PIL decode,
                resize, RandomResizedCrop, albumentations flip / FancyPCA / Normalize; fp32, NCHW,
                nn.LocalResponseNorm in place of core.lrn.LRN.
  (c) compute   train_one_epoch again, but fed pre-made float batches already in memory.
  (d) roofline  FlopCounterMode training FLOPs per image against the measured fp32 torch.mm rate.
Then compute-only variants (LRN cost, memory layout, bf16 autocast, torch.compile) and the cost
of the per-epoch MLflow logging. Each measurement first runs untimed warm-up batches.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import IMAGENET_MEAN, draw_epoch
from .config import ConfigError, RunConfig, load_experiments
from .data import REPO, DataError, Split, Stats, resolve_root, scan
from .engine import (Data, _layout, autocast, build_model, build_pipeline, evaluate, resolve_device,
                     train_one_epoch)
from .flops import matmul_gflops, sync, train_flops_per_image
from .lrn import LRN
from .schedule import build_optimizer

PLAIN_WORKERS = 2                 # the seed's DataLoader
IMAGENET_TRAIN = 1_281_167        # images per ImageNet-1k epoch
PAPER_EPOCHS = 90
SECTIONS = ("plain", "eval", "lrn", "layout", "precision", "compile", "mlflow", "roofline")
MLFLOW_METRICS = ("train_loss", "lr", "val_top1_err", "val_top5_err", "epoch_time_s", "images_per_s",
                  "val10_top1_err", "val10_top5_err")   # the engine logs the first six each epoch


class BenchError(RuntimeError):
    """A setting the benchmark cannot run (e.g. --gpu-synthetic without CUDA)."""


# ----------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Budget:
    """How long each measurement runs: `batches` timed batches, or (batches=None) `seconds`."""
    batches: int | None = None
    seconds: float = 20.0
    warmup: int = 2               # untimed batches first (worker start-up, allocator, autotuning)
    chunk: int = 5                # batches per train_one_epoch call when timing by seconds


@dataclass
class Timing:
    name: str
    images: int = 0
    seconds: float = 0.0
    batches: int = 0
    warmup_s: float = 0.0
    note: str = ""
    error: str = ""

    @property
    def ips(self) -> float:
        """Images per second (nan when the measurement failed)."""
        return self.images / self.seconds if self.seconds > 0 and not self.error else float("nan")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "images_per_s": self.ips}


def time_calls(name: str, run: Callable[[int, int], int], budget: Budget, device: torch.device,
               warmup: int | None = None) -> Timing:
    """Time a loop that runs in calls: run(batches, call_index) trains `batches` batches and
    returns the images it saw. One untimed warm-up call, then one call of budget.batches, or
    calls of budget.chunk batches until budget.seconds have passed."""
    t0 = time.perf_counter()
    run(warmup or budget.warmup, 0)
    sync(device)
    out = Timing(name, warmup_s=time.perf_counter() - t0)
    start = time.perf_counter()
    for call in itertools.count(1):
        size = budget.batches or budget.chunk
        out.images += run(size, call)
        out.batches += size
        if budget.batches or time.perf_counter() - start >= budget.seconds:
            break
    sync(device)
    out.seconds = time.perf_counter() - start
    return out


def time_steps(name: str, step: Callable[[], int], budget: Budget, device: torch.device,
               limit_s: float | None = None, warmup: int | None = None) -> Timing:
    """Time a loop one batch at a time: step() trains one batch and returns its images. Untimed
    warm-up steps, then budget.batches steps or budget.seconds; with limit_s, the timed part stops
    once warm-up plus timing reach limit_s (but runs at least 3 s)."""
    t0 = time.perf_counter()
    for _ in range(warmup or budget.warmup):
        step()
    sync(device)
    out = Timing(name, warmup_s=time.perf_counter() - t0)
    cap = max(3.0, limit_s - out.warmup_s) if limit_s else float("inf")
    start = time.perf_counter()
    while True:
        out.images += step()
        out.batches += 1
        elapsed = time.perf_counter() - start
        if budget.batches and out.batches >= budget.batches or not budget.batches and elapsed >= budget.seconds:
            break
        if elapsed >= cap:
            out.note = f"cut at the {limit_s:.0f} s limit"
            break
    sync(device)
    out.seconds = time.perf_counter() - start
    return out


def guarded(name: str, measure: Callable[[], Timing]) -> Timing:
    """Run one measurement; a failure becomes a Timing whose `error` holds the message."""
    try:
        return measure()
    except Exception as err:   # noqa: BLE001 - report and go on with the other measurements
        last = traceback.extract_tb(err.__traceback__)[-1]
        print(f"  {name} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return Timing(name, error=f"{type(err).__name__}: {str(err).strip()[:2000]} "
                                  f"(at {os.path.basename(last.filename)}:{last.lineno})")


# ----------------------------------------------------------------------------------------- models
def variant_config(cfg: RunConfig, channels_last: bool | None = None, precision: str | None = None,
                   lrn: bool | None = None) -> RunConfig:
    """cfg with the profile's layout / precision or the lrn toggle changed (None: unchanged)."""
    p, t = cfg.profile, cfg.toggles
    p = dataclasses.replace(p, channels_last=p.channels_last if channels_last is None else channels_last,
                            precision=precision or p.precision)
    return RunConfig(p, t if lrn is None else dataclasses.replace(t, lrn=lrn), cfg.seed)


def swap_lrn(model: nn.Module) -> nn.Module:
    """Replace every core.lrn.LRN by nn.LocalResponseNorm of the same strength (PyTorch divides
    alpha by the window size: paper alpha 1e-4 -> alpha=5e-4)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, LRN):
                setattr(parent, name, nn.LocalResponseNorm(child.size, alpha=child.alpha * child.size,
                                                           beta=child.beta, k=child.k))
    return model


def new_model(cfg: RunConfig, device: torch.device, torch_lrn: bool = False, compiled: bool = False):
    """The harness model (core.engine.build_model) and its SGD (core.schedule.build_optimizer).
    Returns (module to call, optimizer); with `compiled` the module is torch.compile'd."""
    model = build_model(cfg)
    if torch_lrn:
        swap_lrn(model)
    model = model.to(device)
    p = cfg.profile
    optimizer = build_optimizer(model.parameters(), p.lr, p.momentum, p.weight_decay)
    return (torch.compile(model) if compiled else model), optimizer


def train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, device: torch.device, precision: str):
    """One step exactly as in core.engine.train_one_epoch (for loops that cannot call it)."""
    with autocast(device, precision):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# ------------------------------------------------------------------------------- (a) harness loop
def window(split: Split, images: int, call: int) -> Split:
    """A contiguous run of `images` samples of a split, still memory-mapped; successive calls walk
    through the split. Asking for at least the whole split gives the whole split."""
    n = len(split.labels)
    if images >= n:
        return split
    start = (call * images) % (n - images + 1)
    return dataclasses.replace(split, images=split.images[start:start + images],
                               labels=split.labels[start:start + images])


def measure_harness(cfg: RunConfig, data: Data, device: torch.device, budget: Budget) -> Timing:
    """(a) core.engine.train_one_epoch over windows of the real uint8 cache, with the profile's
    batch, layout and precision and the config's augmentation toggles."""
    p = cfg.profile
    model, optimizer = new_model(cfg, device)
    pipeline = build_pipeline(cfg, data.stats).to(device)

    def run(batches: int, call: int) -> int:
        part = window(data.train, batches * p.batch_size, call)
        return train_one_epoch(model, optimizer, pipeline, part, p.batch_size, cfg.seed, call,
                               p.channels_last, p.precision)[1]
    return time_calls("harness", run, budget, device)


def measure_eval(cfg: RunConfig, data: Data, device: torch.device, budget: Budget) -> Timing:
    """core.engine.evaluate (centre crop) over windows of the val cache: the rest of an epoch."""
    p = cfg.profile
    model, _ = new_model(cfg, device)
    pipeline = build_pipeline(cfg, data.stats).to(device)

    def run(batches: int, call: int) -> int:
        part = window(data.val, batches * p.eval_batch_size, call)
        evaluate(model, pipeline, part, p.eval_batch_size, channels_last=p.channels_last, precision=p.precision)
        return len(part.labels)
    return time_calls("harness eval", run, budget, device)


# ------------------------------------------------------------------------------- (b) seed-style loop
class SeedStyleJpegs(torch.utils.data.Dataset):
    """The seed's per-sample input pipeline over JPEG files: PIL decode, shorter side to the
    profile's prep size, RandomResizedCrop to the crop size, then albumentations HorizontalFlip,
    FancyPCA(alpha=0.1, p=0.5) and Normalize (mean subtracted in 0..255, std 1); float32 CHW."""

    def __init__(self, samples: list[tuple[str, int]], prep: int, crop: int):
        import albumentations as A
        import torchvision.transforms as T
        self.samples = samples
        self.resize, self.crop = T.Resize(prep), T.RandomResizedCrop(crop)
        self.album = A.Compose([A.HorizontalFlip(p=0.5), A.FancyPCA(alpha=0.1, p=0.5),
                                A.Normalize(mean=IMAGENET_MEAN, std=(1 / 255,) * 3, max_pixel_value=255.0)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image
        path, label = self.samples[i]
        with Image.open(path) as img:
            img = self.crop(self.resize(img.convert("RGB")))
        x = self.album(image=np.asarray(img))["image"]
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)), label


def measure_plain(cfg: RunConfig, root, device: torch.device, budget: Budget) -> Timing:
    """(b) the seed's loop: DataLoader(shuffle, 2 workers) over SeedStyleJpegs, fp32, NCHW, the same
    AlexNet size with nn.LocalResponseNorm. Worker restarts at each pass are included."""
    p = cfg.profile
    samples, _ = scan(root, "train", max_per_class=p.max_per_class)
    loader = torch.utils.data.DataLoader(SeedStyleJpegs(samples, p.prep_size, p.image_size),
                                         batch_size=p.batch_size, shuffle=True, drop_last=True,
                                         num_workers=PLAIN_WORKERS)
    plain = variant_config(cfg, channels_last=False, precision="fp32")
    model, optimizer = new_model(plain, device, torch_lrn=True)
    model.train()
    batches = (batch for _ in itertools.count() for batch in loader)   # passes back to back

    def step() -> int:
        x, y = next(batches)
        train_step(model, optimizer, x.to(device), y.to(device), device, "fp32")
        return len(x)
    return time_steps("plain", step, budget, device)


# ------------------------------------------------------------------------------- (c) compute only
class PremadeBatches:
    """Stands in for core.augment.Pipeline inside train_one_epoch: hands back float batches made
    beforehand (cycled), so the loop runs without data loading or augmentation."""

    def __init__(self, batches: list[torch.Tensor], crop_size: int, device: torch.device):
        self.batches, self.crop_size, self.device = batches, crop_size, device

    def train_batch(self, images, draws, start: int) -> torch.Tensor:
        return self.batches[(start // len(self.batches[0])) % len(self.batches)]


def pixel_free(n: int, prep: int, num_classes: int) -> Split:
    """A Split of n samples without pixels: train_one_epoch reads only the count, the prep size
    (shape[-1]) and the labels, so the (n, 0, 1, prep) images cost nothing to index."""
    labels = np.random.default_rng(0).integers(0, num_classes, n)
    return Split(np.zeros((n, 0, 1, prep), np.uint8), labels, (), "", "")


def premade(cfg: RunConfig, data: Data, device: torch.device, count: int = 3) -> list[torch.Tensor]:
    """`count` float batches of real images through the real pipeline, kept in memory."""
    p = cfg.profile
    pipeline = build_pipeline(cfg, data.stats).to(device)
    n = min(len(data.train.labels), count * p.batch_size)
    draws = draw_epoch(n, data.train.images.shape[-1], p.image_size, cfg.seed, 0)
    return [pipeline.train_batch(np.asarray(data.train.images[s:s + p.batch_size]), draws, s)
            for s in range(0, n - p.batch_size + 1, p.batch_size)] or \
        [pipeline.train_batch(np.asarray(data.train.images[:n]), draws, 0)]


def measure_compute(name: str, cfg: RunConfig, batches: list[torch.Tensor], device: torch.device,
                    budget: Budget, torch_lrn: bool = False, compiled: bool = False) -> Timing:
    """(c) and its variants: train_one_epoch fed pre-made batches (PremadeBatches), with cfg's
    layout, precision and LRN; torch_lrn swaps in nn.LocalResponseNorm; compiled wraps the model
    in torch.compile (its compilation happens in the untimed warm-up, reported as warmup_s)."""
    p = cfg.profile
    model, optimizer = new_model(cfg, device, torch_lrn=torch_lrn, compiled=compiled)
    stub = PremadeBatches([_layout(x, p.channels_last) for x in batches], p.image_size, device)
    bs = len(batches[0])

    def run(count: int, call: int) -> int:
        fake = pixel_free(count * bs, p.prep_size, p.num_classes)
        return train_one_epoch(model, optimizer, stub, fake, bs, cfg.seed, call, p.channels_last, p.precision)[1]
    return time_calls(name, run, budget, device, warmup=max(budget.warmup, 3) if compiled else None)
