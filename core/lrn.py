"""Local response normalisation exactly as the paper writes it (§3.3), with a hand-written backward.

    b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2) ** beta      (channels outside 0..C-1 skipped)

`torch.nn.LocalResponseNorm` computes the same thing with alpha divided by n (so the paper's
alpha=1e-4 is its alpha=5e-4) through a padded avg_pool3d; autograd then keeps several
full-size intermediates. Here the forward is n shifted adds and one pow; the backward uses

    dL/da_i = g_i * d_i^-beta  -  2 * alpha * beta * a_i * sum_{j in window(i)} g_j * a_j * d_j^(-beta-1)

(the window is symmetric, so the same shifted-add sum serves both directions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def window_sum(x: torch.Tensor, n: int) -> torch.Tensor:
    """Sum over the n channels centred on each channel (zero beyond the edges). x: (N, C, H, W)."""
    half = n // 2
    c = x.shape[1]
    padded = F.pad(x, (0, 0, 0, 0, half, n - 1 - half))
    out = padded[:, 0:c].clone()
    for shift in range(1, n):
        out += padded[:, shift:shift + c]
    return out


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, size: int, alpha: float, beta: float, k: float):
        d = window_sum(a * a, size).mul_(alpha).add_(k)
        scale = d.pow(-beta)
        ctx.save_for_backward(a, d, scale)
        ctx.size, ctx.alpha, ctx.beta = size, alpha, beta
        return a * scale

    @staticmethod
    def backward(ctx, g):
        a, d, scale = ctx.saved_tensors
        inner = window_sum(g * a * scale / d, ctx.size)
        grad = g * scale - (2.0 * ctx.alpha * ctx.beta) * a * inner
        return grad, None, None, None, None


def lrn(a: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> torch.Tensor:
    """The paper's LRN; alpha is the paper's (not divided by size)."""
    return _LRNFunction.apply(a, size, alpha, beta, k)


class LRN(nn.Module):
    """Paper §3.3 LRN; `alpha` in the paper's units (1e-4), unlike nn.LocalResponseNorm."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return lrn(a, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha} (paper units), beta={self.beta}, k={self.k}"
