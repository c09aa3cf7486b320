"""Build a C source of this package once per machine and load it with ctypes.

The library is compiled with the system C compiler ($CC, default `cc`) for this machine's
instruction set (-march=native) and kept in `native/` beside the image caches
($ALEXNET_CACHE_DIR, else ~/.cache/alexnet-ablation), named by a hash of the source, the compiler,
the flags and the CPU's feature flags, so a shared home directory never hands one machine's build
to another. The file is written under a
temporary name and renamed, so a crash never leaves a half-written library and two processes
building at once both end with a complete one.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

from .data import cache_dir

FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")


def cpu_features() -> str:
    """The CPU's feature flags (Linux), else the platform's processor name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load(source: Path) -> ctypes.CDLL:
    """The compiled library of `source`; raises OSError or subprocess.CalledProcessError (with the
    compiler's message) when it cannot be built."""
    compiler = os.environ.get("CC", "cc")
    text = source.read_bytes()
    key = hashlib.sha256(b"\0".join([text, compiler.encode(), " ".join(FLAGS).encode(),
                                     cpu_features().encode()])).hexdigest()[:16]
    target = cache_dir() / "native" / f"{source.stem}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", prefix=f".{source.stem}-", dir=target.parent)
        os.close(fd)
        try:
            subprocess.run([compiler, *FLAGS, str(source), "-o", tmp, "-lm"], check=True,
                           capture_output=True, text=True, timeout=300)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ctypes.CDLL(str(target))


class Library:
    """One C source of this package, built and loaded on first use. `get()` gives the library, or
    None (after one warning naming the fallback and `hint`) when it cannot be built on this machine.
    `signatures`: function name -> (argtypes, restype)."""

    def __init__(self, source: str, signatures: dict[str, tuple[list, object]], what: str, hint: str = ""):
        self.source, self.signatures, self.what, self.hint = source, signatures, what, hint
        self.lib: ctypes.CDLL | None = None
        self.failed = False

    def get(self) -> ctypes.CDLL | None:
        if self.lib is None and not self.failed:
            try:
                lib = load(Path(__file__).with_name(self.source))
                for name, (argtypes, restype) in self.signatures.items():
                    getattr(lib, name).argtypes, getattr(lib, name).restype = argtypes, restype
                self.lib = lib
            except Exception as err:   # noqa: BLE001 - no compiler, or one that rejects the flags
                self.failed = True
                detail = (getattr(err, "stderr", None) or str(err)).strip()
                warnings.warn(f"{self.what}: the C kernels could not be built ({type(err).__name__}: {detail[:300]}); "
                              f"using plain ops (slower).{' ' + self.hint if self.hint else ''}", RuntimeWarning)
        return self.lib
