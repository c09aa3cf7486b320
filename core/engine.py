"""One training loop: build the run's model, train for its epochs, evaluate every epoch (centre
crop) and at the end (10 crops, §4.1), and report everything through a RunLog.

Metric keys (step = epoch, 1-based): train_loss, lr, val_top1_err, val_top5_err, epoch_time_s,
images_per_s; at the end val10_top1_err, val10_top5_err, epochs_at_chance, wall_time_s. Tag:
outcome (core/outcomes.py).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from .augment import CENTRE_VIEW, Pipeline, draw_epoch
from .checkpoint import Checkpoints, rng_state, set_rng_state
from .config import RunConfig
from .data import Split, Stats
from . import distributed, outcomes, runtime, stream
from .model import AlexNet, Arch, init_weights
from .schedule import Schedule, build_optimizer


@dataclass(frozen=True)
class Data:
    train: Split
    val: Split
    stats: Stats


@dataclass(frozen=True)
class Result:
    metrics: dict[str, float]     # final values
    outcome: str                  # core.outcomes.OUTCOMES
    epochs_run: int
    wall_s: float
    resumed_from: int = 0         # the checkpoint's epoch this call started after (0: from scratch)


def arch_for(cfg: RunConfig, num_classes: int | None = None) -> Arch:
    """num_classes: from the data (default: the profile's dataset, 10 or 1000)."""
    p = cfg.profile
    return Arch(num_classes=num_classes or p.num_classes, image_size=p.image_size, width=p.width, stem=p.stem,
                toggles=cfg.toggles)


def build_model(cfg: RunConfig, num_classes: int | None = None) -> AlexNet:
    """Seeded so that seed k gives the same initial weights to every variant of one architecture."""
    torch.manual_seed(cfg.seed)
    model = AlexNet(arch_for(cfg, num_classes))
    init_weights(model)
    if cfg.profile.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_pipeline(cfg: RunConfig, stats: Stats) -> Pipeline:
    return Pipeline(stats, cfg.profile.image_size, cfg.toggles)


def resolve_device(device: str | None = None) -> torch.device:
    """"auto" (or None): CUDA when available, else the CPU. Under torchrun, "auto" and "cuda" are
    the process's own GPU (cuda:LOCAL_RANK)."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and distributed.launched():
        device = f"cuda:{distributed.local_rank()}"
    return torch.device(device)


def layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def autocast(device: torch.device, precision: str):
    """bf16 autocast when the profile asks for it (fp32 otherwise)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32",
               scale: float = 1.0) -> torch.Tensor:
    """One SGD step on a ready batch; returns the (device) mean loss, without a host sync. scale:
    the loss's weight in the gradient (under torchrun: this rank's share of the batch times the
    number of ranks, whose gradients DistributedDataParallel averages)."""
    with autocast(x.device, precision):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    (loss * scale if scale != 1.0 else loss).backward()
    optimizer.step()
    return loss.detach()


def gather(images, idx):
    """Rows `idx` of the uint8 cache: a numpy memmap (read in file order; idx a numpy array) or a
    device tensor (idx a tensor, best already on that device)."""
    if torch.is_tensor(images):
        return images[torch.as_tensor(idx, device=images.device)]
    sorted_idx = np.sort(idx)
    return np.asarray(images[sorted_idx])[np.searchsorted(sorted_idx, idx)]


def on_device(split: Split, device: torch.device, max_fraction: float = 0.5) -> Split:
    """The split's uint8 cache moved to a CUDA device when it fits in `max_fraction` of its free
    memory (then gathers and augmentation never leave the GPU); otherwise unchanged."""
    if device.type != "cuda" or torch.is_tensor(split.images):
        return split
    free, _ = torch.cuda.mem_get_info(device)
    if split.images.nbytes > max_fraction * free:
        return split
    return replace(split, images=host_tensor(split.images).to(device))


def host_tensor(images: np.ndarray) -> torch.Tensor:
    """A tensor over the cache's memory without a copy. The cache is a read-only memory map; torch
    warns about non-writable arrays, but nothing writes to it: it is only copied from."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(images))


def train_one_epoch(model, optimizer, pipeline: Pipeline, train: Split, batch_size: int, seed: int,
                    epoch: int, channels_last: bool = True, precision: str = "fp32",
                    from_disk: bool = False) -> tuple[float, int]:
    """One pass over the training set in the epoch's drawn order; returns (mean loss, images).
    from_disk: the batches' rows streamed from the cache file (core/stream.py) instead of gathered
    from the cache. Under torchrun each rank trains its share of every batch (core/distributed.py)."""
    model.train()
    device = pipeline.device
    n = len(train.labels)
    host = draw_epoch(n, train.images.shape[-1], pipeline.crop_size, seed, epoch)
    draws = host.to(device)   # on a GPU: nothing per batch waits for the host (no small copies)
    labels = torch.from_numpy(train.labels).to(device)
    total = torch.zeros((), device=device)
    ranks = distributed.size()
    spans = []   # (first, stop) epoch positions this rank trains, its offset in the batch, the batch's size
    for start in range(0, n, batch_size):
        whole = min(batch_size, n - start)
        lo, hi = distributed.part(whole)
        spans.append((start + lo, start + hi, lo, whole))
    with contextlib.ExitStack() as stack:
        if from_disk:
            reader = stack.enter_context(stream.Reader(train.images, pin=device.type == "cuda"))
            rows = reader.batches(host.order[a:b].numpy() for a, b, _, _ in spans)
        else:
            on_device = torch.is_tensor(train.images)
            rows = (gather(train.images, draws.order[a:b] if on_device else host.order[a:b].numpy())
                    for a, b, _, _ in spans)
        for (a, b, lo, whole), images in zip(spans, rows):
            x = layout(pipeline.train_batch(images, draws, a), channels_last)
            with distributed.batch_shard(lo, whole):
                loss = train_step(model, optimizer, x, labels[draws.order[a:b]], precision, (b - a) * ranks / whole)
            total += loss * (b - a)
    return distributed.all_sum(total).item() / n, n


@torch.no_grad()
def evaluate(model, pipeline: Pipeline, split: Split, batch_size: int, ten_crop: bool = False,
             average: str = "softmax", channels_last: bool = True, precision: str = "fp32") -> dict[str, float]:
    """Top-1/top-5 error (fractions) of the centre crop (val_*); with ten_crop also of the paper's
    10 views (val10_*), averaged as softmax outputs (paper) or logits (the seed). The centre crop
    is one of the 10 views: its errors come from the same forward passes."""
    model.eval()
    zero = torch.zeros((), dtype=torch.long, device=pipeline.device)
    wrong = {prefix: [zero, zero] for prefix in (("val", "val10") if ten_crop else ("val",))}   # top-1, top-5
    n = len(split.labels)
    labels = torch.from_numpy(split.labels).to(pipeline.device)
    lo, hi = distributed.part(n)   # under torchrun: this rank's share, counts summed below
    for start in range(lo, hi, batch_size):
        stop = min(start + batch_size, hi)
        images = split.images[start:stop]
        images = images if torch.is_tensor(images) else np.array(images)   # a writable copy of the slice
        y = labels[start:stop]
        with autocast(pipeline.device, precision):
            logits = torch.stack([model(layout(v, channels_last)) for v in pipeline.eval_views(images, ten_crop)])
        logits = logits.float()                                                           # (V, B, classes)
        scores = {"val": logits[CENTRE_VIEW if ten_crop else 0].softmax(-1)}
        if ten_crop:
            scores["val10"] = logits.softmax(-1).mean(0) if average == "softmax" else logits.mean(0)
        for prefix, score in scores.items():                                             # (B, classes)
            top5 = score.topk(min(5, score.shape[-1]), -1).indices
            wrong[prefix][0] = wrong[prefix][0] + (top5[:, 0] != y).sum()
            wrong[prefix][1] = wrong[prefix][1] + (~(top5 == y[:, None]).any(-1)).sum()
    out = {}
    for prefix in wrong:   # read once, at the end
        wrong1, wrong5 = distributed.all_sum(torch.stack(wrong[prefix])).tolist()
        out.update({f"{prefix}_top1_err": wrong1 / n, f"{prefix}_top5_err": wrong5 / n})
    return out


def train(cfg: RunConfig, data: Data, run, on_epoch=None, device: str | None = None,
          checkpoints: Checkpoints | None = None) -> Result:
    """Train one configuration; `run` is a tracking RunLog; on_epoch(epoch, metrics) for progress.
    With `checkpoints`, a checkpoint is written after each due epoch, and training continues from
    the newest one there: with the same code on a CPU, a resumed cell ends exactly as an
    uninterrupted one. Under torchrun every rank calls this; rank 0 passes the real `run` and
    `checkpoints` (the others a core.tracking.NullRun and None) and its checkpoint is sent to all."""
    runtime.configure()   # threads, malloc
    p, t = cfg.profile, cfg.toggles
    dev = resolve_device(device)
    precision = runtime.resolve_precision(p.precision, dev)
    num_classes = len(data.train.classes)
    model = build_model(cfg, num_classes).to(dev)
    torch.manual_seed(cfg.seed)   # dropout stream, independent of how many draws init took
    pipeline = build_pipeline(cfg, data.stats).to(dev)
    input_path = stream.resolve(p.input, data.train.images, dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if input_path == "memory":
            data = Data(on_device(data.train, dev), on_device(data.val, dev), data.stats)
    optimizer = build_optimizer(model, p.lr, p.momentum, p.weight_decay, t)
    schedule = Schedule(optimizer, t, p.lr, cfg.patience)
    saved = distributed.broadcast(checkpoints.latest() if checkpoints else None)
    if saved:   # before DistributedDataParallel copies rank 0's weights to the others
        model.load_state_dict(saved["model"])
    net = distributed.wrap(model, dev)
    net = runtime.compiled(net) if p.compile else net   # shares model's parameters
    start_wall = time.perf_counter()
    metrics: dict[str, float] = {}
    diverged, epoch, val_top1, wall_before = False, 0, [], 0.0
    resumed_from = saved["epoch"] if saved else 0
    if saved:
        optimizer.load_state_dict(saved["optimizer"])
        schedule.scheduler.load_state_dict(saved["schedule"])
        set_rng_state(saved["rng"])
        epoch, val_top1, metrics, wall_before = saved["epoch"], list(saved["val_top1"]), dict(saved["metrics"]), saved["wall_s"]
    for epoch in range(epoch + 1, cfg.epochs + 1):
        runtime.set_threads()   # this process's share of the CPUs, as other runs start and stop
        lr = schedule.lr
        t0 = time.perf_counter()
        loss, seen = train_one_epoch(net, optimizer, pipeline, data.train, p.batch_size, cfg.seed, epoch,
                                     p.channels_last, precision, input_path == "stream")
        train_s = time.perf_counter() - t0
        if not math.isfinite(loss):
            diverged = True
            run.log_metrics({"train_loss": loss, "lr": lr}, step=epoch)
            break
        metrics = evaluate(net, pipeline, data.val, p.eval_batch_size, ten_crop=epoch == cfg.epochs,
                           average=t.tta_average, channels_last=p.channels_last, precision=precision)
        val_top1.append(metrics["val_top1_err"])
        epoch_s = time.perf_counter() - t0
        metrics.update(train_loss=loss, lr=lr, epoch_time_s=epoch_s, images_per_s=seen / train_s)
        run.log_metrics(metrics, step=epoch)    # one batched call per epoch
        schedule.step(metrics)
        if checkpoints and checkpoints.due(epoch):
            checkpoints.save(epoch, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "schedule": schedule.scheduler.state_dict(), "rng": rng_state(),
                                     "val_top1": val_top1, "metrics": metrics,
                                     "wall_s": wall_before + time.perf_counter() - start_wall})
        if on_epoch:
            on_epoch(epoch, metrics)
    if not diverged and "val10_top1_err" not in metrics:
        # the last epoch's evaluation has them, except in a checkpoint of the last epoch written by
        # a version that evaluated the 10 views after the loop: resuming it evaluates them here
        ten = evaluate(net, pipeline, data.val, p.eval_batch_size, ten_crop=True, average=t.tta_average,
                       channels_last=p.channels_last, precision=precision)
        metrics.update({k: ten[k] for k in ("val10_top1_err", "val10_top5_err")})
        run.log_metrics({k: metrics[k] for k in ("val10_top1_err", "val10_top5_err")}, step=epoch)
    wall = wall_before + time.perf_counter() - start_wall
    outcome = outcomes.outcome(val_top1, num_classes, p.epoch_scale, diverged)
    run.set_tags({"outcome": outcome})
    run.log_metrics({"wall_time_s": wall, "epochs_at_chance": outcomes.epochs_at_chance(val_top1, num_classes)},
                    step=epoch)
    run.log_state_dict(bundle(cfg, model, data), "model/weights.pt")
    return Result(metrics, outcome, epoch, wall, resumed_from)


BUNDLE_FORMAT = "alexnet-ablation-model/1"


def bundle(cfg: RunConfig, model: AlexNet, data: Data) -> dict:
    """What classifying an image needs, in one file that loads with weights_only=True: the weights,
    the resolved config (architecture toggles, profile geometry), the class names and the
    training mean image (§2)."""
    return {"format": BUNDLE_FORMAT, "state_dict": model.state_dict(), "config": cfg.resolved(),
            "classes": list(data.train.classes), "mean_image": torch.from_numpy(np.asarray(data.stats.mean_image))}
