"""Process-wide settings for training speed; they change no result.

- threads: torch's intra-op threads, one per CPU unless $ALEXNET_THREADS says otherwise.
- malloc: glibc returns every large freed block to the kernel by default (blocks over its mmap
  threshold are unmapped, and the heap top is trimmed), so each training step's fresh activation
  and batch tensors are first-touched again (millions of page faults a minute on the `cpu`
  profile). Raising the mmap threshold to its maximum (32 MiB) and never trimming keeps those pages
  in the process: 6x fewer faults, kernel time 4.7 s -> 1.7 s per benchmark, compute-only +9 %
  images/s (README, Speed). Set $ALEXNET_MALLOC_TUNE=0 to keep glibc's defaults. A no-op off glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

from .config import ConfigError
from .lrn import kernel_choice

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3   # glibc's mallopt parameters
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024                       # glibc's limit on 64-bit builds
TOP_PAD = 64 * 1024 * 1024
NEVER_TRIM = 2 ** 31 - 1                                     # mallopt takes a C int


def check_environment() -> None:
    """The ALEXNET_* settings this package reads while training, checked before anything starts:
    a ConfigError that names the fix."""
    threads = os.environ.get("ALEXNET_THREADS")
    if threads is not None and not (threads.isdigit() and int(threads) > 0):
        raise ConfigError(f"ALEXNET_THREADS={threads!r}: set a positive whole number of threads, or unset it")
    if os.environ.get("ALEXNET_MALLOC_TUNE", "1") not in ("0", "1"):
        raise ConfigError(f"ALEXNET_MALLOC_TUNE={os.environ['ALEXNET_MALLOC_TUNE']!r}: set 0 or 1, or unset it")
    try:
        kernel_choice()
    except ValueError as err:
        raise ConfigError(str(err)) from None


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls natively: CUDA with bf16 support, or a CPU with
    AVX-512 BF16 or AMX as torch reports it (elsewhere bf16 autocast is emulated: ~12x slower)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_kind() in ("AVX512_BF16", "AMX")
    return False


def cpu_kind() -> str:
    """The CPU's instruction set for this purpose: AMX or AVX512_BF16 (native bf16 matmuls), else
    torch's vector capability (AVX512, AVX2, DEFAULT, ...). Names the benchmark's result file."""
    features = torch._C._cpu._get_cpu_capability()
    if features.get("amx_bf16"):
        return "AMX"
    if features.get("avx512_bf16"):
        return "AVX512_BF16"
    return torch.backends.cpu.get_cpu_capability()


def cpu_name() -> str:
    return str(torch._C._cpu._get_cpu_capability().get("cpu_name", "unknown"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where the device computes it natively, else fp32; fp32/bf16 are kept."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def set_threads() -> int:
    """One intra-op thread per CPU (or $ALEXNET_THREADS); returns the count."""
    n = int(os.environ.get("ALEXNET_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


def tune_malloc() -> bool:
    """Keep freed memory in the process (see the module doc); True when glibc took the settings."""
    if os.environ.get("ALEXNET_MALLOC_TUNE", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):   # not glibc (macOS, musl without mallopt, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, NEVER_TRIM), (M_TOP_PAD, TOP_PAD)))


def configure() -> None:
    """Both settings; the engine and the benchmark call this before they train."""
    set_threads()
    tune_malloc()
