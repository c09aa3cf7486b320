"""Process-wide settings for training speed; they change no result.

- threads: torch's intra-op threads: this process's share of the CPUs among the harness processes
  running on the machine (each registers its pid in a folder of the temp dir; the share is taken
  again every epoch, so a second run started later makes the first give up its extra threads), or
  $ALEXNET_THREADS.
- malloc: glibc returns every large freed block to the kernel by default (blocks over its mmap
  threshold are unmapped, and the heap top is trimmed), so each training step's fresh activation
  and batch tensors are first-touched again (millions of page faults a minute on the `cpu`
  profile). Raising the mmap threshold to its maximum (32 MiB) and never trimming keeps those pages
  in the process: 6x fewer faults, kernel time 4.7 s -> 1.7 s per benchmark, compute-only +9 %
  images/s (README, Speed). Set $ALEXNET_MALLOC_TUNE=0 to keep glibc's defaults. A no-op off glibc.
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import os
import tempfile
from pathlib import Path

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
    AVX-512 BF16 or AMX as torch reports it. Elsewhere bf16 autocast is emulated: ~12x slower than
    fp32 on AVX2, ~3x on AVX-512 without BF16 (results/bench-*.txt), although oneDNN reports bf16
    support there (torch.ops.mkldnn._is_mkldnn_bf16_supported()), so that is not the test."""
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


def machine() -> dict:
    """What a speed figure depends on: CPU model, instruction set, native bf16, CPUs, torch build, GPU."""
    out = {"cpu": cpu_name(), "cpu_kind": cpu_kind(), "cpu_bf16_native": native_bf16(torch.device("cpu")),
           "cpus": cpus(), "torch": torch.__version__}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def describe(m: dict) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return (f"{m['cpu']}, {m['cpu_kind']}, bf16 {'native' if m['cpu_bf16_native'] else 'emulated'} on the CPU, "
            f"{m['cpus']} CPUs, torch {m['torch']}{gpu}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where the device computes it natively, else fp32; fp32/bf16 are kept."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


PROCS = Path(tempfile.gettempdir()) / "alexnet-ablation-procs"


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


def register(folder: Path | None = None) -> None:
    """Count this process among the harness processes of the machine (until it exits)."""
    folder = folder or PROCS
    folder.mkdir(parents=True, exist_ok=True)
    mine = folder / str(os.getpid())
    if not mine.exists():
        mine.touch()
        atexit.register(lambda: mine.unlink(missing_ok=True))


def harness_processes(folder: Path | None = None) -> int:
    """Live registered processes (at least 1); files of processes that are gone are removed."""
    folder = folder or PROCS
    live = 0
    for f in folder.glob("*") if folder.is_dir() else []:
        if f.name.isdigit() and _alive(int(f.name)):
            live += 1
        else:
            f.unlink(missing_ok=True)
    return max(1, live)


def set_threads() -> int:
    """This process's share of the CPUs (or $ALEXNET_THREADS); returns the count."""
    if os.environ.get("ALEXNET_THREADS"):
        n = int(os.environ["ALEXNET_THREADS"])
    else:
        register()
        n = max(1, cpus() // harness_processes())
    if n != torch.get_num_threads():
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


def compiled(module: torch.nn.Module) -> torch.nn.Module:
    """torch.compile(module), without the warning a CUDA build of torch logs on a machine without
    CUDA when inductor first builds a CPU kernel ("No CUDA runtime is found, using CUDA_HOME=..."):
    the CPU kernels need no CUDA, so it is noise."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(module)


def configure() -> None:
    """Both settings; the engine and the benchmark call this before they train."""
    set_threads()
    tune_malloc()
