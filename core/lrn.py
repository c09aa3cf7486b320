"""Local response normalisation exactly as the paper writes it (§3.3), with a hand-written backward.

    b_i = a_i / d_i ** beta,   d_i = k + alpha * sum_{j in W(i)} a_j^2,   W(i) = i - n/2 .. i + n/2 (within 0..C-1)

`torch.nn.LocalResponseNorm` computes the same thing with alpha divided by n (so the paper's
alpha=1e-4 is its alpha=5e-4) through a padded avg_pool3d; autograd then keeps several
full-size intermediates. Here the window sum is n shifted adds over the channels, d^-0.75 is
rsqrt(d * sqrt(d)), and the backward is

    dL/da_i = g_i * d_i^-beta  -  2 * alpha * beta * a_i * sum_{j : i in W(j)} g_j * a_j * d_j^(-beta-1)

On the CPU, float32 activations run through hand-written C loops (core/lrn.c: blocks of whole
pixels, each step one long vectorised loop; the forward keeps d^-beta for the backward, which
recomputes d (additions only) from the input; the same floats as the formula evaluated in float32 in
that order),
built once per machine by the system C compiler (core/native.py). Everything else (GPUs, float64,
inside a torch.compile'd model, or a machine without a C compiler) uses the plain ops above, which
compute the same formula. $ALEXNET_LRN_KERNEL picks: auto (default: the C loops on the CPU),
fused (the same) or eager (plain ops everywhere). If the build fails, a warning names the fallback
and plain ops are used. Lower-precision inputs (bf16 under autocast) are cast to float32 first and
back after.
"""
from __future__ import annotations

import contextlib
import ctypes
import os

import torch
import torch.nn.functional as F
from torch import nn

from . import native

KERNELS = ("auto", "fused", "eager")


def window_sum(x: torch.Tensor, size: int, before: int) -> torch.Tensor:
    """out_i = sum of x_j for j = i - before .. i - before + size - 1 (zero outside the channels)."""
    c = x.shape[1]
    padded = F.pad(x, (0, 0, 0, 0, before, size - 1 - before))
    out = padded[:, 0:c]
    for shift in range(1, size):
        out = out + padded[:, shift:shift + c]
    return out


def inverse_power(d: torch.Tensor, beta: float) -> torch.Tensor:
    """d ** -beta; the paper's beta=0.75 as rsqrt(d * sqrt(d)) (cheaper than pow on the CPU)."""
    return torch.rsqrt(d * torch.sqrt(d)) if beta == 0.75 else d.pow(-beta)


def lrn_forward(a: torch.Tensor, size: int, alpha: float, beta: float, k: float):
    """Returns (b, d^-beta, b / d): the output and what the backward needs."""
    d = window_sum(a * a, size, size // 2) * alpha + k
    scale = inverse_power(d, beta)
    out = a * scale
    return out, scale, out / d


def lrn_backward(g: torch.Tensor, a: torch.Tensor, scale: torch.Tensor, b_over_d: torch.Tensor,
                 size: int, coef: float) -> torch.Tensor:
    """coef = 2 * alpha * beta; the window is mirrored (j such that i is in W(j))."""
    return g * scale - coef * a * window_sum(g * b_over_d, size, size - 1 - size // 2)


def kernel_choice() -> str:
    """$ALEXNET_LRN_KERNEL (default auto), checked."""
    choice = os.environ.get("ALEXNET_LRN_KERNEL", "auto")
    if choice not in KERNELS:
        raise ValueError(f"ALEXNET_LRN_KERNEL={choice!r} is not a kernel choice: set it to one of {', '.join(KERNELS)}")
    return choice


_I64, _F32, _PTR = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
_LIB = native.Library("lrn.c", {
    "lrn_forward": ([_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _F32, _F32, _F32, ctypes.c_int], ctypes.c_int),
    "lrn_backward": ([_PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _F32, _F32, _F32, ctypes.c_int], ctypes.c_int),
}, "LRN", "Set ALEXNET_LRN_KERNEL=eager to skip the attempt.")


class _Kernels:
    """The C loops (core/lrn.c), built on first use; plain ops after a failed build. `forced` (see
    `using`) overrides $ALEXNET_LRN_KERNEL."""

    def __init__(self):
        self.forced: str | None = None

    @property
    def failed(self) -> bool:
        return _LIB.failed

    @property
    def lib(self) -> ctypes.CDLL | None:
        return _LIB.lib

    def native(self, x: torch.Tensor) -> ctypes.CDLL | None:
        """The library to run x through, or None for plain ops."""
        if torch.compiler.is_compiling():   # inside a compiled model: its compiler fuses the plain ops
            return None
        choice = self.forced or kernel_choice()
        if choice == "eager" or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
            return None
        return _LIB.get()


def native_call(fn, *inputs: torch.Tensor, scalars: tuple, outputs: int = 1) -> list[torch.Tensor]:
    """One C kernel over channels_last float32 inputs (each pixel's channels contiguous); returns
    its `outputs` output tensors, channels_last."""
    outs = [torch.empty_like(inputs[0], memory_format=torch.channels_last) for _ in range(outputs)]
    n, c, h, w = outs[0].shape
    if fn(*(t.data_ptr() for t in (*inputs, *outs)), n * h * w, c, *scalars, torch.get_num_threads()):
        raise MemoryError("LRN: the C kernel could not allocate its per-thread buffer")
    return outs


KERNEL = _Kernels()


@contextlib.contextmanager
def using(choice: str | None):
    """Run the block with one of KERNELS (None: as $ALEXNET_LRN_KERNEL says), e.g. to time them."""
    if choice is not None and choice not in KERNELS:
        raise ValueError(f"LRN kernel {choice!r}: use one of {', '.join(KERNELS)}")
    before, KERNEL.forced = KERNEL.forced, choice
    try:
        yield
    finally:
        KERNEL.forced = before


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, size: int, alpha: float, beta: float, k: float):
        dtype = a.dtype
        with torch.autocast(a.device.type, enabled=False):
            x = a if dtype in (torch.float32, torch.float64) else a.float()
            lib = KERNEL.native(x)
            if lib is not None:
                x = x.contiguous(memory_format=torch.channels_last)
                out, scale = native_call(lib.lrn_forward, x, scalars=(size, size // 2, alpha, beta, k), outputs=2)
                if not a.is_contiguous(memory_format=torch.channels_last):   # give back the input's layout
                    out = out.contiguous()
                ctx.save_for_backward(x, scale)
            else:
                out, scale, b_over_d = lrn_forward(x, size, alpha, beta, k)
                ctx.save_for_backward(x, scale, b_over_d)
        ctx.native = lib is not None
        ctx.size, ctx.alpha, ctx.beta, ctx.k, ctx.dtype = size, alpha, beta, k, dtype
        return out.to(dtype)

    @staticmethod
    def backward(ctx, g):
        with torch.autocast(g.device.type, enabled=False):
            if ctx.native:
                x, scale = ctx.saved_tensors
                g = g.to(x.dtype).contiguous(memory_format=torch.channels_last)
                (grad,) = native_call(KERNEL.lib.lrn_backward, g, x, scale,
                                      scalars=(ctx.size, ctx.size // 2, ctx.alpha, ctx.beta, ctx.k))
            else:
                x, scale, b_over_d = ctx.saved_tensors
                grad = lrn_backward(g.to(x.dtype), x, scale, b_over_d, ctx.size, 2.0 * ctx.alpha * ctx.beta)
        return grad.to(ctx.dtype), None, None, None, None


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
