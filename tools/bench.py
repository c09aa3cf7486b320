"""Speed benchmark: the harness's training loop next to a seed-style loop, the bare compute, and
the matmul roofline, all on the same model size, data and machine.

    python -m tools.bench --profile cpu                  # table + ratios: 20 s per measurement, ~5 min
    python -m tools.bench --profile cpu --quick          # 2 timed batches per measurement (smoke check)
    python -m tools.bench --profile cpu --batches 74     # 74 batches each (cpu: the harness's whole epoch)
    python -m tools.bench --profile cpu --json out.json  # also write the results as JSON
    python -m tools.bench --gpu-synthetic                # paper-size AlexNet on CUDA, synthetic images

Rows of the CPU table (every training row: forward, backward and SGD step of the profile's batch):
  (a) harness   core.engine.train_one_epoch over the real uint8 cache: memmap reads, batched crop /
                flip / lighting (core.augment.Pipeline), the profile's layout and precision.
  (b) plain     the seed's style: torch DataLoader (2 workers) over the JPEGs; per sample PIL decode,
                resize, RandomResizedCrop, albumentations flip / FancyPCA / Normalize; fp32, NCHW,
                nn.LocalResponseNorm in place of core.lrn.LRN.
  (c) compute   train_one_epoch again, but fed pre-made float batches already in memory.
  (d) roofline  FlopCounterMode training FLOPs per image against the measured torch.mm rate at the
                precision the profile resolves to.
Then compute-only variants (LRN cost, memory layout, bf16 autocast, torch.compile) and the cost
of the per-epoch MLflow logging. Each measurement first runs untimed warm-up batches. Rows (a),
(c), (d), the eval row and the variants are timed interleaved, in rounds (time_interleaved), so a
machine whose speed drifts during the run slows them alike and their ratios stay put.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from core.augment import IMAGENET_MEAN, draw_epoch
from ablations.runner import load_data
from core.config import PAPER_EPOCHS, ConfigError, RunConfig, load_experiments
from core.data import REPO, DataError, Split, Stats, resolve_root, scan
from core.engine import (Data, layout, train_step, build_model, build_pipeline, evaluate, resolve_device,
                     train_one_epoch)
from core import runtime
from tools.flops import matmul_gflops, sync, train_flops_per_image
from core.lrn import LRN, using as lrn_kernels
from core.schedule import build_optimizer

PLAIN_WORKERS = 2                 # the seed's DataLoader
IMAGENET_TRAIN = 1_281_167        # images per ImageNet-1k epoch
SECTIONS = ("plain", "eval", "compute", "lrn", "layout", "precision", "compile", "mlflow", "roofline", "processes")
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
    rounds: int = 6               # CPU rows: the seconds are spread over this many interleaved rounds


@dataclass
class Timing:
    """One measurement: `images` trained (or evaluated) in `seconds`, after `warmup_s` untimed."""
    name: str
    batch: int = 0
    images: int = 0
    seconds: float = 0.0
    warmup_s: float = 0.0
    note: str = ""
    error: str = ""
    round_ips: list = dataclasses.field(default_factory=list)   # images/s in each interleaved round

    @property
    def ips(self) -> float:
        """Images per second (nan when the measurement failed); timed in 3 or more interleaved
        rounds: the median round's, so one disturbed round does not move the row."""
        if self.error or self.seconds <= 0:
            return float("nan")
        return statistics.median(self.round_ips) if len(self.round_ips) >= 3 else self.images / self.seconds

    @property
    def ms_per_batch(self) -> float:
        return 1000 * self.batch / self.ips if self.ips > 0 else float("nan")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "images_per_s": _num(self.ips), "ms_per_batch": _num(self.ms_per_batch)}


def _num(x: float | None) -> float | None:
    """JSON-safe number: nan and None become None."""
    return None if x is None or x != x else float(x)


def time_steps(name: str, batch: int, step: Callable[[], int], budget: Budget, device: torch.device,
               limit_s: float | None = None, warmup: int | None = None) -> Timing:
    """Time a loop one batch at a time: step() trains one batch and returns its images. Untimed
    warm-up steps, then budget.batches steps or budget.seconds; with limit_s, the timed part stops
    once warm-up plus timing reach limit_s (but runs at least 3 s)."""
    t0 = time.perf_counter()
    for _ in range(budget.warmup if warmup is None else warmup):
        step()
    sync(device)
    out = Timing(name, batch, warmup_s=time.perf_counter() - t0)
    cap = max(3.0, limit_s - out.warmup_s) if limit_s else float("inf")
    start = time.perf_counter()
    for steps in itertools.count(1):
        out.images += step()
        elapsed = time.perf_counter() - start
        if budget.batches and steps >= budget.batches or not budget.batches and elapsed >= budget.seconds:
            break
        if elapsed >= cap:
            out.note = f"cut at the {limit_s:.0f} s limit"
            break
    sync(device)
    out.seconds = time.perf_counter() - start
    return out


@dataclass(frozen=True)
class Loop:
    """A measurement that runs in calls: run(batches, call_index) trains (or evaluates) `batches`
    batches and returns the images it saw; at least `warmup` untimed batches first (None: the
    budget's)."""
    name: str
    batch: int
    run: Callable[[int, int], float]
    warmup: int | None = None


def time_interleaved(loops: list[Loop], budget: Budget, device: torch.device) -> dict[str, Timing]:
    """Time several loops fairly on a machine whose speed drifts (shared hosts, turbo): each is
    warmed up, then the timed seconds are dealt out in budget.rounds rounds, every loop getting one
    slice of budget.seconds / rounds per round, in the same order. A slow minute then costs every
    row alike instead of one row alone, so their ratios hold from one run to the next. With
    budget.batches: one round of that many batches each. A loop that fails gets its error, the
    others go on."""
    rows: dict[str, Timing] = {}
    for loop in loops:
        print(f"  warming up {LABELS.get(loop.name, loop.name)} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            loop.run(max(budget.warmup, loop.warmup or 0), 0)
            sync(device)
            rows[loop.name] = Timing(loop.name, loop.batch, warmup_s=time.perf_counter() - t0)
        except Exception as err:   # noqa: BLE001 - report and go on with the other measurements
            rows[loop.name] = failed_timing(loop.name, err)
    live = [loop for loop in loops if not rows[loop.name].error]
    rounds = 1 if budget.batches else max(1, budget.rounds)
    calls = dict.fromkeys(rows, 0)
    print(f"  timing {len(live)} rows in {rounds} interleaved round(s) ...", file=sys.stderr, flush=True)
    for _ in range(rounds):
        for loop in live:
            out = rows[loop.name]
            if out.error:
                continue
            images, start = 0.0, time.perf_counter()
            try:
                while True:
                    calls[loop.name] += 1
                    images += loop.run(budget.batches or budget.chunk, calls[loop.name])
                    if budget.batches or time.perf_counter() - start >= budget.seconds / rounds:
                        break
                sync(device)
            except Exception as err:   # noqa: BLE001
                rows[loop.name] = dataclasses.replace(failed_timing(loop.name, err), warmup_s=out.warmup_s)
                continue
            seconds = time.perf_counter() - start
            out.images += images
            out.seconds += seconds
            out.round_ips.append(images / seconds)
    for out in rows.values():
        if len(out.round_ips) > 1:
            out.note = f"median of {len(out.round_ips)} rounds ({min(out.round_ips):.0f}-{max(out.round_ips):.0f})"
    return rows


def failed_timing(name: str, err: Exception) -> Timing:
    """A measurement that raised: a Timing whose `error` holds the message and where it came from."""
    last = traceback.extract_tb(err.__traceback__)[-1]
    print(f"  {name} failed: {type(err).__name__}: {err}", file=sys.stderr)
    return Timing(name, error=f"{type(err).__name__}: {str(err).strip()[:2000]} "
                              f"(at {os.path.basename(last.filename)}:{last.lineno})")


def guarded(name: str, measure: Callable[[], Timing]) -> Timing:
    """Run one measurement; a failure becomes a failed_timing."""
    try:
        return measure()
    except Exception as err:   # noqa: BLE001 - report and go on with the other measurements
        return failed_timing(name, err)


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
    optimizer = build_optimizer(model, p.lr, p.momentum, p.weight_decay, cfg.toggles)
    return (runtime.compiled(model) if compiled else model), optimizer


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


def harness_loop(cfg: RunConfig, data: Data, device: torch.device) -> Loop:
    """(a) core.engine.train_one_epoch over windows of the real uint8 cache, with the profile's
    batch, layout and precision and the config's augmentation toggles."""
    p = cfg.profile
    model, optimizer = new_model(cfg, device)
    pipeline = build_pipeline(cfg, data.stats).to(device)

    def run(batches: int, call: int) -> int:
        part = window(data.train, batches * p.batch_size, call)
        return train_one_epoch(model, optimizer, pipeline, part, p.batch_size, cfg.seed, call,
                               p.channels_last, p.precision)[1]
    return Loop("harness", p.batch_size, run)


def eval_loop(cfg: RunConfig, data: Data, device: torch.device) -> Loop:
    """core.engine.evaluate (centre crop) over windows of the val cache: the rest of an epoch."""
    p = cfg.profile
    model, _ = new_model(cfg, device)
    pipeline = build_pipeline(cfg, data.stats).to(device)

    def run(batches: int, call: int) -> int:
        part = window(data.val, batches * p.eval_batch_size, call)
        evaluate(model, pipeline, part, p.eval_batch_size, channels_last=p.channels_last, precision=p.precision)
        return len(part.labels)
    return Loop("eval", p.eval_batch_size, run)


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
    AlexNet size with nn.LocalResponseNorm. The warm-up steps use a random batch, so the timed part
    starts a fresh pass over the loader: worker start-up is included, as in each of the seed's
    epochs, and no batch is prefetched before the clock starts."""
    p = cfg.profile
    samples, _ = scan(root, "train", max_per_class=p.max_per_class)
    loader = torch.utils.data.DataLoader(SeedStyleJpegs(samples, p.prep_size, p.image_size),
                                         batch_size=p.batch_size, shuffle=True, drop_last=True,
                                         num_workers=PLAIN_WORKERS)
    plain = variant_config(cfg, channels_last=False, precision="fp32")
    model, optimizer = new_model(plain, device, torch_lrn=True)
    model.train()
    x0 = torch.randn(p.batch_size, 3, p.image_size, p.image_size, device=device)
    y0 = torch.zeros(p.batch_size, dtype=torch.long, device=device)
    for _ in range(budget.warmup):
        train_step(model, optimizer, x0, y0, "fp32")
    batches = (batch for _ in itertools.count() for batch in loader)   # passes back to back, started lazily

    def step() -> int:
        x, y = next(batches)
        train_step(model, optimizer, x.to(device), y.to(device), "fp32")
        return len(x)
    try:
        out = time_steps("plain", p.batch_size, step, budget, device, warmup=0)
    finally:
        batches.close()   # stops the loader's workers now, before the next measurement
    out.note = "timed from a fresh pass (worker start-up included)"
    return out


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
    starts = range(0, max(n - p.batch_size, 0) + 1, p.batch_size)
    return [pipeline.train_batch(np.array(data.train.images[s:s + p.batch_size]), draws, s) for s in starts]


def compute_loop(name: str, cfg: RunConfig, batches: list[torch.Tensor], device: torch.device,
                 torch_lrn: bool = False, compiled: bool = False, lrn_kernel: str | None = None) -> Loop:
    """(c) and its variants: train_one_epoch fed pre-made batches (PremadeBatches), with cfg's
    layout, precision and LRN; torch_lrn swaps in nn.LocalResponseNorm; compiled wraps the model
    in torch.compile (its compilation happens in the untimed warm-up, reported as warmup_s);
    lrn_kernel picks core.lrn's kernels for this loop's calls (core.lrn.using)."""
    p = cfg.profile
    model, optimizer = new_model(cfg, device, torch_lrn=torch_lrn, compiled=compiled)
    stub = PremadeBatches([layout(x, p.channels_last) for x in batches], p.image_size, device)
    bs = len(batches[0])

    def run(count: int, call: int) -> int:
        fake = pixel_free(count * bs, p.prep_size, p.num_classes)
        with lrn_kernels(lrn_kernel):
            return train_one_epoch(model, optimizer, stub, fake, bs, cfg.seed, call, p.channels_last, p.precision)[1]
    return Loop(name, bs, run, 3 if compiled else None)


# ------------------------------------------------------------------------------- (d) roofline
def roofline(cfg: RunConfig, batch: torch.Tensor, device: torch.device, seconds: float,
             dtype: torch.dtype = torch.float32, n: int = 2048) -> dict:
    """(d) training FLOPs per image (forward + backward, FlopCounterMode, one batch) of the harness
    model, the measured n x n torch.mm rate, and their quotient: the matmul-bound images/s."""
    flops = model_flops(cfg, batch, device)
    rate = matmul_gflops(device, n, seconds, dtype)
    return roof_dict(flops, rate, n, dtype)


def model_flops(cfg: RunConfig, batch: torch.Tensor, device: torch.device) -> float:
    model, _ = new_model(cfg, device)
    x = layout(batch, cfg.profile.channels_last)
    return train_flops_per_image(model, x, torch.zeros(len(x), dtype=torch.long, device=device))


def roof_dict(flops: float, rate: float, n: int, dtype: torch.dtype) -> dict:
    return {"train_gflop_per_image": flops / 1e9, "matmul_gflops": rate, "matmul_n": n,
            "matmul_dtype": str(dtype).replace("torch.", ""), "images_per_s": rate * 1e9 / flops}


def roofline_loop(flops: float, device: torch.device, dtype: torch.dtype, n: int = 2048) -> Loop:
    """The roofline as one more interleaved row: each call multiplies `count` n x n matrices and
    returns the training images that many FLOPs would pay for (so its images/s is the roofline)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def run(count: int, call: int) -> float:
        for _ in range(max(count, 2)):
            torch.mm(a, b)
        return 2 * n ** 3 * max(count, 2) / flops
    return Loop("roofline", 0, run, 1)


# ------------------------------------------------------------------------------- MLflow logging
def mlflow_logging(epochs: int) -> dict:
    """Seconds of the harness's per-epoch logging: a core.tracking.MlflowTracker child run under a
    parent (as the runner makes them) in a temporary sqlite store, one batched log_metrics of the
    8 MLFLOW_METRICS per epoch. log_s_per_epoch is the mean over epochs 2..N (the first call,
    reported apart, pays lazy imports); run_start_end_s is the once-per-run child start + end."""
    import logging

    import mlflow
    from core.tracking import MlflowTracker
    logging.getLogger("alembic").setLevel(logging.WARNING)
    previous = mlflow.get_tracking_uri()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tracker = MlflowTracker("bench", f"sqlite:///{tmp}/mlflow.db", system_metrics=False)
            with tracker.parent("bench", {"role": "grid"}, {"grid": "bench"}):
                t0 = time.perf_counter()
                with tracker.child("cell", {f"param{i}": i for i in range(30)}, {"role": "cell"},
                                   {"name": "bench", "digest": "0", "source": tmp}) as run:
                    start_s = time.perf_counter() - t0
                    per_epoch = []
                    for epoch in range(1, epochs + 1):
                        t = time.perf_counter()
                        run.log_metrics({k: 0.1 * epoch for k in MLFLOW_METRICS}, step=epoch)
                        per_epoch.append(time.perf_counter() - t)
                    t0 = time.perf_counter()
                end_s = time.perf_counter() - t0
    finally:
        mlflow.set_tracking_uri(previous)
    rest = per_epoch[1:] or per_epoch
    return {"metrics_per_epoch": len(MLFLOW_METRICS), "epochs_logged": epochs,
            "log_s_per_epoch": sum(rest) / len(rest), "first_log_s": per_epoch[0],
            "run_start_end_s": start_s + end_s}


# ------------------------------------------------------------------------------- the CPU table
LABELS = {
    "harness": "(a) harness train_one_epoch",
    "plain": f"(b) plain: seed-style DataLoader, {PLAIN_WORKERS} workers",
    "compute": "(c) compute only (pre-made batches)",
    "eval": "harness evaluate (centre crop)",
    "compute_no_lrn": "compute, lrn=False",
    "compute_torch_lrn": "compute, nn.LocalResponseNorm",
    "compute_plain_lrn": "compute, core.lrn.LRN without fused kernels",
    "compute_contiguous": "compute, contiguous (NCHW)",
    "compute_channels_last": "compute, channels_last",
    "compute_bf16": "compute, bf16 autocast",
    "compute_fp32": "compute, fp32",
    "compute_compiled": "compute, torch.compile",
}


def compute_variants(cfg: RunConfig, skip: set[str]) -> dict[str, tuple[RunConfig, dict]]:
    """The compute-only runs: key -> (config, extra compute_loop arguments)."""
    p = cfg.profile
    out = {"compute": (cfg, {})}
    if "lrn" not in skip and cfg.toggles.lrn:
        out["compute_no_lrn"] = (variant_config(cfg, lrn=False), {})
        out["compute_torch_lrn"] = (cfg, {"torch_lrn": True})
        out["compute_plain_lrn"] = (cfg, {"lrn_kernel": "eager"})
    if "layout" not in skip:
        key = "compute_contiguous" if p.channels_last else "compute_channels_last"
        out[key] = (variant_config(cfg, channels_last=not p.channels_last), {})
    if "precision" not in skip:
        other = "fp32" if p.precision == "bf16" else "bf16"
        out[f"compute_{other}"] = (variant_config(cfg, precision=other), {})
    if "compile" not in skip:
        out["compute_compiled"] = (cfg, {"compiled": True})
    return out


def run_cpu(cfg: RunConfig, data: Data, root, device: torch.device, budget: Budget,
            skip: set[str] = frozenset(), quick: bool = False, data_args: tuple = ()) -> dict:
    """Every measurement of the table, each guarded (a failure is reported, the rest still run).
    The training, eval, compute and roofline rows are timed interleaved (time_interleaved); the
    seed-style loop runs alone (its DataLoader workers would prefetch during the other rows)."""
    rows: dict[str, Timing] = {}
    loops: list[Loop] = []

    def add(key: str, make: Callable[[], Loop]) -> None:
        try:
            loops.append(make())
        except Exception as err:   # noqa: BLE001
            rows[key] = failed_timing(key, err)

    add("harness", lambda: harness_loop(cfg, data, device))
    if "eval" not in skip:
        add("eval", lambda: eval_loop(cfg, data, device))
    batches = premade(cfg, data, device) if "compute" not in skip else []
    for key, (vcfg, extra) in (compute_variants(cfg, skip).items() if batches else []):
        add(key, lambda: compute_loop(key, vcfg, batches, device, **extra))
    mm_dtype = torch.bfloat16 if cfg.profile.precision == "bf16" else torch.float32   # the profile's precision
    flops = None
    if "roofline" not in skip and batches:
        flops = model_flops(cfg, batches[0], device)
        add("roofline", lambda: roofline_loop(flops, device, mm_dtype))
    timed = time_interleaved(loops, budget, device)
    roof = timed.pop("roofline", None)
    rows.update(timed)
    if "plain" not in skip:
        print(f"  measuring {LABELS['plain']} ...", file=sys.stderr, flush=True)
        rows["plain"] = guarded("plain", lambda: measure_plain(cfg, root, device, budget))
    order = ["harness", "eval", "plain", *compute_variants(cfg, skip)]
    rows = {k: rows[k] for k in order if k in rows}
    out = {"setting": setting(cfg, data, device, budget), "rows": rows}
    if "processes" not in skip and device.type == "cpu":
        out["processes"] = guarded_dict(lambda: two_processes(cfg, budget, data_args))
    if roof is not None:
        out["roofline"] = ({"error": roof.error} if roof.error else
                           {**roof_dict(flops, roof.ips * flops / 1e9, 2048, mm_dtype), "note": roof.note})
    if "mlflow" not in skip:
        out["mlflow"] = guarded_dict(lambda: mlflow_logging(3 if quick else 10))
    out["ratios"] = summarise(out, len(data.train.labels), len(data.val.labels))
    return out


def two_processes(cfg: RunConfig, budget: Budget, data_args: tuple = ()) -> dict:
    """The harness row again in two benchmark processes at once, each with half the CPUs (what two
    grid workers on this machine get): images/s of each and their sum."""
    import subprocess
    threads = max(1, runtime.cpus() // 2)
    print(f"  measuring the harness in 2 processes of {threads} thread(s) each ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = lambda i: [sys.executable, "-m", "tools.bench", "--profile", cfg.profile.name, "--json", f"{tmp}/{i}.json",
                         *data_args,
                         "--skip", ",".join(s for s in SECTIONS if s != "harness"),
                         *(["--batches", str(budget.batches)] if budget.batches else ["--seconds", str(budget.seconds)])]
        env = {**os.environ, "ALEXNET_THREADS": str(threads)}
        procs = [subprocess.Popen(cmd(i), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
        errs = [p.communicate()[1] for p in procs]
        if any(p.returncode for p in procs):
            raise BenchError(f"a benchmark process failed: {errs[0][-500:]}{errs[1][-500:]}")
        ips = [json.load(open(f"{tmp}/{i}.json"))["rows"]["harness"]["images_per_s"] for i in range(2)]
    return {"threads_each": threads, "images_per_s_each": ips, "images_per_s_total": sum(ips)}


def guarded_dict(measure: Callable[[], dict]) -> dict:
    try:
        return measure()
    except Exception as err:   # noqa: BLE001
        print(f"  failed: {type(err).__name__}: {err}", file=sys.stderr)
        return {"error": f"{type(err).__name__}: {str(err).strip()[:2000]}"}


def setting(cfg: RunConfig, data: Data, device: torch.device, budget: Budget) -> dict:
    p = cfg.profile
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"profile": p.name, "image_size": p.image_size, "prep_size": p.prep_size, "width": p.width,
            "stem": list(p.stem), "batch_size": p.batch_size, "channels_last": p.channels_last,
            "precision": p.precision, "device": str(device), "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "machine": runtime.machine(), "load_average_1min": load,
            "train_images": len(data.train.labels),
            "val_images": len(data.val.labels), "budget": dataclasses.asdict(budget), "torch": torch.__version__}


def _ratio(a: float | None, b: float | None) -> float | None:
    return _num(a / b) if a is not None and b and a == a and b == b else None


def _overhead(with_it: float | None, without: float | None) -> float | None:
    """1 - (images/s with a feature) / (images/s without it): the share of time the feature costs."""
    r = _ratio(with_it, without)
    return None if r is None else 1 - r


def summarise(res: dict, n_train: int, n_val: int) -> dict:
    """The headline ratios and the variant comparisons (None where a side is missing or failed)."""
    ips = {k: t.ips for k, t in res["rows"].items()}
    g = ips.get
    cl, contig = (g("compute"), g("compute_contiguous")) if "compute_contiguous" in ips else \
        (g("compute_channels_last"), g("compute"))
    bf16, fp32 = (g("compute_bf16"), g("compute")) if "compute_bf16" in ips else (g("compute"), g("compute_fp32"))
    no_lrn = g("compute_no_lrn")
    out = {"harness/plain": _ratio(g("harness"), g("plain")),
           "harness/compute": _ratio(g("harness"), g("compute")),
           "harness/roofline": _ratio(g("harness"), res.get("roofline", {}).get("images_per_s")),
           "lrn_overhead_core": _overhead(g("compute"), no_lrn),
           "lrn_overhead_torch": _overhead(g("compute_torch_lrn"), no_lrn),
           "lrn_overhead_plain": _overhead(g("compute_plain_lrn"), no_lrn),
           "channels_last/contiguous": _ratio(cl, contig),
           "bf16/fp32": _ratio(bf16, fp32),
           "compile/eager": _ratio(g("compute_compiled"), g("compute"))}
    train_s = _ratio(n_train, g("harness"))
    eval_s = _ratio(n_val, g("eval")) or 0.0
    log_s = res.get("mlflow", {}).get("log_s_per_epoch")
    out["epoch_s"] = None if train_s is None else train_s + eval_s
    out["mlflow_overhead"] = _ratio(log_s, out["epoch_s"])
    return out


def _fmt(x: float | None, spec: str = ".1f", none: str = "n/a") -> str:
    return none if x is None or x != x else format(x, spec)


def print_cpu(res: dict) -> None:
    """The readable report: settings, the table, the ratios, the variants, MLflow."""
    s, b = res["setting"], res["setting"]["budget"]
    print(f"\nAlexNet speed, profile {s['profile']}: {s['image_size']} px crops of {s['prep_size']} px, "
          f"width {s['width']}, batch {s['batch_size']}, {'channels_last' if s['channels_last'] else 'NCHW'}, "
          f"{s['precision']}; {s['train_images']} train images; device {s['device']}, {s['threads']} threads "
          f"on {s['cpus']} CPUs, load average {_fmt(s['load_average_1min'], '.2f')} at the end")
    print(f"budget per measurement: {b['batches'] or ''}{' batches' if b['batches'] else str(b['seconds']) + ' s'}"
          f" after {b['warmup']} warm-up batches\n")
    _print_table(res["rows"], res.get("roofline"))
    proc = res.get("processes")
    if proc and "error" not in proc:
        one = res["rows"]["harness"].ips
        print(f"\nharness, 1 process ({s['threads']} threads): {_fmt(one)} images/s; 2 processes at once "
              f"({proc['threads_each']} thread(s) each): {' + '.join(_fmt(x) for x in proc['images_per_s_each'])}"
              f" = {_fmt(proc['images_per_s_total'])} images/s")
    elif proc:
        print(f"\n2 processes: failed: {proc['error']}")
    _print_ratios(res["ratios"], res["rows"].get("compute_compiled"))
    _print_mlflow(res.get("mlflow"), res["ratios"])


def _print_table(rows: dict[str, Timing], roof: dict | None) -> None:
    print(f"{'measurement':50s} {'images/s':>9s} {'ms/batch':>9s} {'timed':>7s} {'warm-up':>8s}  note")
    for key, t in rows.items():
        tail = f"ERROR {t.error}" if t.error else t.note
        print(f"{LABELS[key]:50s} {_fmt(t.ips):>9s} {_fmt(t.ms_per_batch, '.0f'):>9s} "
              f"{t.seconds:6.1f}s {t.warmup_s:7.1f}s  {tail}")
    if roof:
        note = roof.get("error") or (f"{roof['train_gflop_per_image']:.3f} GFLOP/image (fwd+bwd) at "
                                     f"{roof['matmul_gflops']:.1f} GFLOP/s ({roof['matmul_dtype']} mm "
                                     f"{roof['matmul_n']}){'; ' + roof['note'] if roof.get('note') else ''}")
        print(f"{'(d) roofline (matmul-bound)':50s} {_fmt(roof.get('images_per_s')):>9s} {'':37s}  {note}")


def _print_ratios(r: dict, compiled: Timing | None) -> None:
    print("\nratios")
    for key in ("harness/plain", "harness/compute", "harness/roofline"):
        print(f"  {key:40s} {_fmt(r[key], '.3f')}")
    print("compute-only comparisons")
    print(f"  {'LRN overhead, core.lrn.LRN':40s} {_fmt(_pct(r['lrn_overhead_core']), '.1f')} %")
    print(f"  {'LRN overhead, core.lrn.LRN, no fused':40s} {_fmt(_pct(r['lrn_overhead_plain']), '.1f')} %")
    print(f"  {'LRN overhead, nn.LocalResponseNorm':40s} {_fmt(_pct(r['lrn_overhead_torch']), '.1f')} %")
    print(f"  {'channels_last / contiguous':40s} {_fmt(r['channels_last/contiguous'], '.3f')}")
    print(f"  {'bf16 autocast / fp32':40s} {_fmt(r['bf16/fp32'], '.3f')}")
    print(f"  {'torch.compile / eager':40s} "
          + (f"failed: {compiled.error}" if compiled and compiled.error else _fmt(r["compile/eager"], ".3f")))


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _print_mlflow(m: dict | None, r: dict) -> None:
    if not m:
        return
    if "error" in m:
        print(f"MLflow logging: failed: {m['error']}")
        return
    print(f"MLflow logging ({m['metrics_per_epoch']} metrics, one log_batch per epoch, sqlite): "
          f"{1000 * m['log_s_per_epoch']:.1f} ms per epoch (first call {1000 * m['first_log_s']:.0f} ms) "
          f"= {_fmt(_pct(r['mlflow_overhead']), '.3f')} % of a {_fmt(r['epoch_s'], '.0f')} s epoch "
          f"(train + eval, from the rows above); run start + end {m['run_start_end_s']:.2f} s once per run")


# ------------------------------------------------------------------------------- (e) GPU, synthetic
def synthetic_stats(prep: int) -> Stats:
    """Stand-in training statistics (speed does not depend on their values): a flat mean image
    and ImageNet-like lighting eigenvalues along the RGB axes."""
    return Stats(np.full((3, prep, prep), 115.0, np.float32), np.array([0.2175, 0.0188, 0.0045]), np.eye(3))


def gpu_batches(pipeline, images: torch.Tensor, labels: torch.Tensor, batch: int, seed: int):
    """Endless (x, y) batches as the engine makes them, but from images already on the GPU: the
    epoch's draws (core.augment.draw_epoch), a gather of the batch, Pipeline.train_batch, layout."""
    n, prep = len(images), images.shape[-1]
    for epoch in itertools.count(1):
        draws = draw_epoch(n, prep, pipeline.crop_size, seed, epoch).to(images.device)
        for start in range(0, n - batch + 1, batch):
            idx = draws.order[start:start + batch]
            yield layout(pipeline.train_batch(images[idx], draws, start), True), labels[idx]


def measure_gpu(name: str, cfg: RunConfig, pipeline, images, labels, batch: int, budget: Budget,
                limit_s: float, compiled: bool = False, augment: bool = True) -> Timing:
    """(e) one GPU variant: SGD steps of cfg's model (bf16 autocast, channels_last) on batches from
    gpu_batches, or (augment=False) on one pre-made batch; compile happens in the warm-up."""
    torch._dynamo.reset()
    device = images.device
    model, optimizer = new_model(cfg, device, compiled=compiled)
    model.train()
    stream = gpu_batches(pipeline, images, labels, batch, cfg.seed)
    if not augment:
        stream = itertools.repeat(next(stream))

    def step() -> int:
        x, y = next(stream)
        train_step(model, optimizer, x, y, cfg.profile.precision)
        return batch
    return time_steps(name, batch, step, budget, device, limit_s=limit_s, warmup=max(budget.warmup, 3))


def gpu_roofline(cfg: RunConfig, device: torch.device, seconds: float) -> dict:
    """Training FLOPs per image at the paper's size against the measured bf16 and fp32 mm rates."""
    x = torch.randn(16, 3, cfg.profile.image_size, cfg.profile.image_size, device=device)
    out = roofline(cfg, x, device, seconds, torch.bfloat16, n=8192)
    out["fp32_matmul_gflops"] = matmul_gflops(device, 8192, seconds, torch.float32)
    return out


def measure_gpu_engine(name: str, cfg: RunConfig, pipeline, images, labels: np.ndarray,
                       batch: int, budget: Budget, compiled: bool = False) -> Timing:
    """core.engine.train_one_epoch itself on the GPU, fed uint8 images either from host memory (a
    numpy array: host gather and host-to-GPU copy per batch included) or from a cache already on
    the GPU (a tensor: what the engine does when the cache fits, see core.engine.on_device)."""
    device = pipeline.device
    torch._dynamo.reset()
    model, optimizer = new_model(cfg, device, compiled=compiled)
    split = Split(images, labels, (), "", "")

    def run(batches: int, call: int) -> int:
        return train_one_epoch(model, optimizer, pipeline, window(split, batches * batch, call), batch, cfg.seed,
                               call, True, cfg.profile.precision)[1]
    return time_interleaved([Loop(name, batch, run, warmup=3)], dataclasses.replace(budget, rounds=1), device)[name]


GPU_VARIANTS = (("pipeline + train, eager", {"compiled": False, "augment": True}),
                ("pipeline + train, torch.compile", {"compiled": True, "augment": True}),
                ("train only (pre-made batch), eager", {"compiled": False, "augment": False}))
GPU_ENGINE = "train_one_epoch, host uint8 -> GPU, eager"
GPU_ENGINE_DEVICE = "train_one_epoch, uint8 cache on GPU, eager"
GPU_ENGINE_COMPILED = "train_one_epoch, uint8 cache on GPU, torch.compile"


def run_gpu(config: str, budget: Budget, limit_s: float = 40.0, n_images: int = 8192,
            batches: tuple[int, ...] = (128, 512), profile: str = "paper", device: str = "cuda",
            only: str = "") -> dict:
    """The paper profile's AlexNet on CUDA (bf16 autocast, channels_last) with synthetic uint8
    images: for each batch size, GPU_VARIANTS on images kept on the GPU, then the engine's own
    loop fed from host memory. Each variant is guarded and capped near limit_s. (profile and
    device exist for dry runs of this code on a CPU.)"""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--gpu-synthetic needs a CUDA GPU, and torch.cuda.is_available() is False "
                         f"here (torch {torch.__version__}, CUDA build {torch.version.cuda}); run it on a GPU machine")
    ex = load_experiments(config)
    cfg = variant_config(RunConfig(ex.profile(profile), ex.baseline, 0), channels_last=True, precision="bf16")
    p = cfg.profile
    torch.manual_seed(0)
    images = torch.randint(0, 256, (n_images, 3, p.prep_size, p.prep_size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, p.num_classes, (n_images,), device=device)
    pipeline = build_pipeline(cfg, synthetic_stats(p.prep_size)).to(device)
    host_images, host_labels = images.cpu().numpy(), labels.cpu().numpy()
    rows = []

    def add(name: str, batch: int, measure: Callable[[], Timing]) -> None:
        if only not in name:   # --gpu-only: variants whose name contains this text
            return
        print(f"  measuring {name}, batch {batch} ...", file=sys.stderr, flush=True)
        rows.append(guarded(name, measure))
        rows[-1].batch = batch
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for batch in batches:
        for name, kw in GPU_VARIANTS:
            add(name, batch, lambda: measure_gpu(name, cfg, pipeline, images, labels, batch, budget=budget,
                                                 limit_s=limit_s, **kw))
        add(GPU_ENGINE, batch, lambda: measure_gpu_engine(GPU_ENGINE, cfg, pipeline, host_images, host_labels,
                                                          batch, budget))
        add(GPU_ENGINE_DEVICE, batch, lambda: measure_gpu_engine(GPU_ENGINE_DEVICE, cfg, pipeline, images,
                                                                 host_labels, batch, budget))
        add(GPU_ENGINE_COMPILED, batch, lambda: measure_gpu_engine(GPU_ENGINE_COMPILED, cfg, pipeline, images,
                                                                   host_labels, batch, budget, compiled=True))
    roof = guarded_dict(lambda: gpu_roofline(cfg, device, 1.0))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return {"setting": {"device": name, "profile": p.name, "image_size": p.image_size,
                        "prep_size": p.prep_size, "width": p.width, "precision": p.precision, "channels_last": True,
                        "synthetic_images": n_images, "limit_s": limit_s, "budget": dataclasses.asdict(budget),
                        "torch": torch.__version__},
            "rows": rows, "roofline": roof}


def paper_run_hours(ips: float) -> float:
    """Hours for 90 ImageNet-1k epochs (1,281,167 images each) at `ips` images/s."""
    return PAPER_EPOCHS["paper"] * IMAGENET_TRAIN / ips / 3600


def print_gpu(res: dict) -> None:
    """The GPU table: images/s per variant and what 90 ImageNet epochs would take at that rate."""
    s = res["setting"]
    print(f"\nGPU synthetic: {s['device']}; {s['profile']} profile's AlexNet ({s['image_size']} px, width "
          f"{s['width']}), bf16 autocast, channels_last, SGD; {s['synthetic_images']} uint8 {s['prep_size']} px "
          f"images through core.augment.Pipeline on the GPU; each variant capped near {s['limit_s']:.0f} s "
          f"including warm-up/compile\n")
    print(f"{'variant':42s} {'batch':>5s} {'images/s':>9s} {'ms/step':>8s} {'warm-up':>8s} {'90 epochs':>10s}  note")
    for t in res["rows"]:
        hours = _fmt(paper_run_hours(t.ips), ".1f") + " h" if t.ips == t.ips else "n/a"
        print(f"{t.name:42s} {t.batch:5d} {_fmt(t.ips, '.0f'):>9s} {_fmt(t.ms_per_batch, '.1f'):>8s} "
              f"{t.warmup_s:7.1f}s {hours:>10s}  {('ERROR ' + t.error) if t.error else t.note}")
    roof = res["roofline"]
    if "error" in roof:
        print(f"roofline: failed: {roof['error']}")
    else:
        print(f"roofline: {roof['train_gflop_per_image']:.3f} GFLOP/image (fwd+bwd); bf16 mm "
              f"{roof['matmul_gflops'] / 1000:.1f} TFLOP/s -> {roof['images_per_s']:.0f} images/s "
              f"({paper_run_hours(roof['images_per_s']):.1f} h for 90 epochs); fp32 mm "
              f"{roof['fp32_matmul_gflops'] / 1000:.1f} TFLOP/s")


# ------------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", help="profile from experiments.yaml (default: cpu)")
    ap.add_argument("--batches", type=int, help="timed batches per measurement (more than an epoch: one "
                                                "whole epoch for the harness rows)")
    ap.add_argument("--seconds", type=float, help="timed seconds per measurement (default 20; GPU: 10)")
    ap.add_argument("--rounds", type=int, default=Budget.rounds, help="interleaved rounds the seconds of each "
                    f"CPU row are spread over; its images/s is the median round's (default {Budget.rounds})")
    ap.add_argument("--quick", action="store_true", help="2 timed batches per measurement after 1 warm-up "
                                                         "(GPU: 3 s); for checking, not for numbers")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--save", action="store_true", help="write the output and JSON to results/bench-<CPU kind>.txt "
                                                        "and .json (one committed result per machine type)")
    ap.add_argument("--data-root", help="ImageFolder root with train/ and val/ (else $ALEXNET_DATA_ROOT, "
                                        "else the default folders)")
    ap.add_argument("--cache-dir", help="uint8 cache folder (else $ALEXNET_CACHE_DIR, else ~/.cache/alexnet-ablation)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, ... (default: CUDA when available, like the engine)")
    ap.add_argument("--config", default=str(REPO / "experiments.yaml"), help="experiments file")
    ap.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {', '.join(SECTIONS)}")
    ap.add_argument("--gpu-synthetic", action="store_true", help="the paper-size model on CUDA with synthetic "
                                                                 "images (ignores --profile and the data options)")
    ap.add_argument("--gpu-only", default="", help="with --gpu-synthetic: only the variants whose name contains this")
    return ap


def make_budget(args, gpu: bool) -> Budget:
    if args.batches is not None and args.batches < 1:
        raise ConfigError(f"--batches must be at least 1, got {args.batches}")
    if args.rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {args.rounds}")
    if args.batches:
        return Budget(batches=args.batches, warmup=1 if args.quick else 2)
    if args.seconds:
        return Budget(seconds=args.seconds, warmup=1 if args.quick else 2, rounds=args.rounds)
    if args.quick:
        return Budget(seconds=3.0, warmup=3) if gpu else Budget(batches=2, warmup=1)
    return Budget(seconds=10.0 if gpu else 20.0, rounds=args.rounds)


def parse_skip(text: str) -> set[str]:
    skip = {s.strip() for s in text.split(",") if s.strip()}
    unknown = skip - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown --skip part(s) {sorted(unknown)}; choices: {', '.join(SECTIONS)}")
    return skip


def to_json(res: dict) -> dict:
    """Timings as dicts, nan as null."""
    def conv(v):
        if isinstance(v, Timing):
            return v.as_dict()
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return _num(v) if isinstance(v, float) else v
    return conv(res)


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.save:
        return _main(args)
    kind = runtime.cpu_kind()
    args.json = args.json or str(REPO / "results" / f"bench-{kind}.json")
    with open(REPO / "results" / f"bench-{kind}.txt", "w") as f:
        f.write(f"# {' '.join(['python -m tools.bench', *(argv if argv is not None else sys.argv[1:])])}\n")
        out, sys.stdout = sys.stdout, _Tee(sys.stdout, f)
        try:
            return _main(args)
        finally:
            sys.stdout = out


def _main(args) -> int:
    print(f"machine: {runtime.describe(runtime.machine())}")
    try:
        runtime.check_environment()
        runtime.configure()   # threads and malloc, as core.engine.train
        budget, skip = make_budget(args, args.gpu_synthetic), parse_skip(args.skip)
        if args.gpu_synthetic:
            res = run_gpu(args.config, budget, limit_s=15.0 if args.quick else 40.0, only=args.gpu_only)
            print_gpu(res)
        else:
            ex = load_experiments(args.config)
            prof = ex.profile(args.profile)
            device = resolve_device(args.device)
            prof = dataclasses.replace(prof, precision=runtime.resolve_precision(prof.precision, device))
            cfg = RunConfig(prof, ex.baseline, 0)
            root = resolve_root(prof.dataset, args.data_root)
            data = load_data(prof, str(root), args.cache_dir)
            data_args = ("--config", args.config, "--device", args.device,
                         *(("--data-root", args.data_root) if args.data_root else ()),
                         *(("--cache-dir", args.cache_dir) if args.cache_dir else ()))
            res = run_cpu(cfg, data, root, device, budget, skip, args.quick, data_args)
            print_cpu(res)
    except (ConfigError, DataError, BenchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(res), f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
