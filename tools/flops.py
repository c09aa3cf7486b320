"""Roofline helpers for tools/bench.py: the model's training FLOPs per image and the machine's
measured matrix-multiply rate.

FLOPs come from torch.utils.flop_counter.FlopCounterMode, which counts matmuls and convolutions
(2 FLOPs per multiply-add) of forward and backward; elementwise work (ReLU, LRN, pooling, the
optimiser) is not counted, so the roofline is the matmul-bound ceiling of the network.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so host timers measure finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_flops_per_image(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Forward + backward FLOPs of one training batch (x, y), divided by the batch size. The
    gradients it leaves behind are cleared; no optimiser step is taken."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def matmul_gflops(device: torch.device, n: int = 2048, seconds: float = 2.0,
                  dtype: torch.dtype = torch.float32) -> float:
    """Measured rate of torch.mm on two n x n matrices, in GFLOP/s (2 n^3 FLOPs per product):
    one untimed warm-up product, then products until `seconds` have passed (at least two)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    sync(device)
    count, start = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1   # on a GPU the host runs ahead; the final sync waits for every queued product
    sync(device)
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9
