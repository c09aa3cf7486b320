"""core/runtime.py: process settings that change speed, not results."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from core import runtime

# a few SGD steps of the `cpu` profile's AlexNet; prints whether glibc took the settings, then the
# page faults of each step (fresh activation tensors that glibc gave back to the kernel fault in again)
PROBE = """
import resource, torch
from core import runtime
tuned = runtime.tune_malloc()
torch.set_num_threads(1)
from core.config import RunConfig, load_experiments
from core.engine import build_model, train_step
from core.schedule import build_optimizer
ex = load_experiments("experiments.yaml")
model = build_model(RunConfig(ex.profile("cpu"), ex.baseline, 0), 10)
opt = build_optimizer(model, 0.01, 0.9, 5e-4)
x = torch.randn(32, 3, 64, 64).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (32,))
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train_step(model, opt, x, y)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, sum(faults[3:]))
"""


def probe(tune: str) -> tuple[str, int]:
    env = {**os.environ, "ALEXNET_MALLOC_TUNE": tune, "ALEXNET_LRN_KERNEL": "eager"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    tuned, faults = out.stdout.split()
    return tuned, int(faults)


def test_malloc_tuning_stops_the_page_faults_of_each_step_and_can_be_turned_off():
    tuned, faults = probe("1")
    default, default_faults = probe("0")
    assert (tuned, default) == ("True", "False")
    assert default_faults > 5000, default_faults          # glibc's default: thousands per step
    assert faults < default_faults / 10, (faults, default_faults)


def test_threads_follow_the_environment(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("ALEXNET_THREADS", "1")
    try:
        assert runtime.set_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_processes_share_the_cpus(tmp_path, monkeypatch):
    """Two live harness processes on the machine: each takes half the CPUs; a process that is gone
    no longer counts (its file is removed)."""
    folder = tmp_path / "procs"
    monkeypatch.setattr(runtime, "PROCS", folder)
    monkeypatch.delenv("ALEXNET_THREADS", raising=False)
    monkeypatch.setattr(runtime, "cpus", lambda: 8)
    before = torch.get_num_threads()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runtime.register(folder)
        (folder / str(other.pid)).touch()
        assert runtime.harness_processes(folder) == 2
        assert runtime.set_threads() == 4 and torch.get_num_threads() == 4
        other.kill()
        other.wait()
        assert runtime.harness_processes(folder) == 1 and not (folder / str(other.pid)).exists()
        assert runtime.set_threads() == 8
    finally:
        other.kill()
        torch.set_num_threads(before)


def test_compiled_prints_no_cuda_home_warning_on_a_cpu():
    """torch.compile on a machine without CUDA builds its CPU kernels silently: a CUDA build of torch
    would log "No CUDA runtime is found, using CUDA_HOME=..." there otherwise."""
    code = ("import torch\nfrom core import runtime\n"
            "net = runtime.compiled(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()))\n"
            "print(net(torch.randn(2, 3, 8, 8)).shape[1])")
    # caches off: a kernel built before would be loaded without the build that logs the warning
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0 and res.stdout.strip() == "4", res.stderr[-2000:]
    assert "CUDA_HOME" not in res.stderr, res.stderr[-2000:]


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    """AMX and AVX-512 BF16 compute bf16 matmuls; AVX-512 without BF16 and AVX2 emulate them
    (oneDNN still reports bf16 support on AVX-512), so `auto` gives fp32 there; forced values stay."""
    cpu = torch.device("cpu")
    for kind, want in (("AMX", "bf16"), ("AVX512_BF16", "bf16"), ("AVX512", "fp32"), ("AVX2", "fp32"),
                       ("DEFAULT", "fp32")):
        monkeypatch.setattr(runtime, "cpu_kind", lambda kind=kind: kind)
        assert runtime.resolve_precision("auto", cpu) == want, kind
        assert runtime.resolve_precision("fp32", cpu) == "fp32" and runtime.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.undo()
    features = torch._C._cpu._get_cpu_capability()
    native = bool(features.get("amx_bf16") or features.get("avx512_bf16"))
    assert runtime.resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
