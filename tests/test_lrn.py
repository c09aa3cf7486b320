"""core/lrn.py against the paper's formula (§3.3), written out here as a plain loop."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.lrn import KERNEL, LRN, lrn
from core.model import LRN_ALPHA

K, N, ALPHA, BETA = 2.0, 5, 1e-4, 0.75   # §3.3


def lrn_reference(a: torch.Tensor, k=K, n=N, alpha=ALPHA, beta=BETA) -> torch.Tensor:
    """b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(C-1,i+n/2)} a_j^2)^beta, channel by channel
    (differentiable by autograd)."""
    c = a.shape[1]
    out = []
    for i in range(c):
        s = torch.zeros_like(a[:, 0])
        for j in range(max(0, i - n // 2), min(c - 1, i + n // 2) + 1):
            s = s + a[:, j] ** 2
        out.append(a[:, i] / (k + alpha * s) ** beta)
    return torch.stack(out, 1)


def realistic(shape, dtype, seed=0):
    """Post-ReLU activations of the magnitude conv1 gives on 0..255 inputs."""
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(shape, generator=g, dtype=torch.float64) * 50).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_matches_paper_formula(dtype):
    a = realistic((2, 11, 4, 3), dtype)
    ref = lrn_reference(a.double())
    out = LRN()(a)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # the alpha term really bites at this scale (k alone would give a ratio of 2**-0.75 = 0.59)
    assert (ref / a.double().clamp_min(1e-9))[a > 10].min() < 0.5


def test_forward_strong_alpha_and_few_channels():
    """Edge windows (C < n) and a large alpha, where any off-by-one in the window shows."""
    a = realistic((1, 3, 2, 2), torch.float64, seed=3)
    torch.testing.assert_close(lrn(a, 5, 0.05, 0.75, 2.0), lrn_reference(a, alpha=0.05), rtol=1e-10, atol=1e-10)
    a = realistic((1, 8, 2, 2), torch.float64, seed=4)
    torch.testing.assert_close(lrn(a, 3, 0.05, 0.5, 1.0), lrn_reference(a, k=1.0, n=3, alpha=0.05, beta=0.5),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_matches_autograd_of_formula(dtype):
    a = realistic((2, 9, 3, 3), dtype, seed=1)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = a.clone().requires_grad_(True)
    (LRN()(x).double() * g).sum().backward()
    xr = a.double().clone().requires_grad_(True)
    (lrn_reference(xr) * g).sum().backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    a = (torch.randn(1, 7, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 20)
    a.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: lrn(t, 5, 1e-3, 0.75, 2.0), (a,), eps=1e-6, atol=1e-6)


def test_equals_torch_local_response_norm_with_alpha_times_size():
    """PyTorch divides alpha by size: the paper's 1e-4 is nn.LocalResponseNorm(alpha=5e-4)."""
    a = realistic((2, 16, 5, 5), torch.float32, seed=6)
    torch.testing.assert_close(LRN(5, 1e-4, 0.75, 2.0)(a), nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(a),
                               rtol=1e-5, atol=1e-5)


def test_seed_alpha_is_the_seed_code():
    """The seed wrote nn.LocalResponseNorm(5, alpha=10e-4): 2e-4 in the paper's units."""
    assert LRN_ALPHA["paper"] == pytest.approx(1e-4)
    a = realistic((2, 16, 5, 5), torch.float32, seed=7)
    seed_code = nn.LocalResponseNorm(5, alpha=10e-4, beta=0.75, k=2.0)(a)
    torch.testing.assert_close(LRN(5, LRN_ALPHA["seed"], 0.75, 2.0)(a), seed_code, rtol=1e-5, atol=1e-5)
    # and it is a different (stronger) normalisation than the paper's
    assert not torch.allclose(LRN(5, LRN_ALPHA["paper"], 0.75, 2.0)(a), seed_code, rtol=1e-3, atol=1e-3)


def test_channels_last_input_gives_the_same_result():
    a = realistic((2, 10, 4, 4), torch.float32, seed=8)
    cl = a.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = LRN()(cl)
    torch.testing.assert_close(out, lrn_reference(a.double()).float(), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    x = a.double().clone().requires_grad_(True)
    lrn_reference(x).sum().backward()
    torch.testing.assert_close(cl.grad.double(), x.grad, rtol=1e-5, atol=1e-5)


def both_kernels(a: torch.Tensor, g: torch.Tensor, monkeypatch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(output, input gradient) of LRN on `a` with upstream gradient g, per kernel choice."""
    results = {}
    for kernel in ("fused", "eager"):
        monkeypatch.setenv("ALEXNET_LRN_KERNEL", kernel)
        x = a.clone().requires_grad_(True)
        out = LRN()(x)
        out.backward(g)
        results[kernel] = (out.detach(), x.grad)
    assert not KERNEL.failed, "the C kernels fell back to plain ops"
    return results


@pytest.mark.parametrize("shape", [(3, 24, 7, 7), (5, 24, 7, 7), (1, 10, 3, 3), (2, 3, 4, 4), (2, 64, 3, 3)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_and_plain_kernels_agree(monkeypatch, shape, channels_last):
    """The C kernels (CPU default) and the plain ops compute the same LRN, forward and backward,
    for several batch sizes, fewer channels than the window, and both layouts (the output keeps
    the input's)."""
    a = realistic(shape, torch.float32, seed=9)
    a = a.contiguous(memory_format=torch.channels_last) if channels_last else a
    g = torch.randn(shape, generator=torch.Generator().manual_seed(10))
    results = both_kernels(a, g, monkeypatch)
    for fused, plain in zip(results["fused"], results["eager"]):
        torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(results["fused"][0].double(), lrn_reference(a.double()), rtol=1e-5, atol=1e-5)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert results["fused"][0].is_contiguous(memory_format=fmt)


def float32_in_kernel_order(x, g, size, alpha, k):
    """The paper's formula (beta 0.75) on [pixels, channels] float32 arrays, each operation rounded
    as the C loops round it: squares, window sums in increasing channel order (0 outside the pixel),
    d^-0.75 as 1 / sqrt(d * sqrt(d)), no fused multiply-adds. Returns (output, input gradient)."""
    f = np.float32
    c, before = x.shape[1], size // 2

    def window(v, first):   # sum over channels i - first .. i - first + size - 1
        padded = np.pad(v, ((0, 0), (first, size - 1 - first)))
        s = padded[:, 0:c]
        for j in range(1, size):
            s = s + padded[:, j:j + c]
        return s

    d = f(k) + f(alpha) * window(x * x, before)
    scale = f(1) / np.sqrt(d * np.sqrt(d))
    t = g * x * scale / d
    coef = f(2) * f(alpha) * f(0.75)
    return x * scale, g * scale - coef * x * window(t, size - 1 - before)


@pytest.mark.parametrize("shape,size", [((3, 24, 7, 7), 5), ((2, 64, 5, 3), 5), ((2, 300, 2, 2), 5),
                                        ((2, 3, 4, 4), 5), ((2, 9, 3, 3), 7), ((1, 12, 3, 3), 4)])
def test_fused_kernels_round_as_float32_in_their_order(monkeypatch, shape, size):
    """Bit for bit: the C loops give the formula's float32 values in their order of operations, for
    channel counts that fill the loops' blocks of pixels unevenly, exceed a block, or are fewer than
    the window, and for other windows; a build that passes it on any machine computes these floats."""
    monkeypatch.setenv("ALEXNET_LRN_KERNEL", "fused")
    a = realistic(shape, torch.float32, seed=12).contiguous(memory_format=torch.channels_last)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(13)).contiguous(memory_format=torch.channels_last)
    x = a.clone().requires_grad_(True)
    out = lrn(x, size, 1e-3, 0.75, 2.0)
    out.backward(g)
    assert not KERNEL.failed
    as_rows = lambda t: t.detach().permute(0, 2, 3, 1).reshape(-1, shape[1]).numpy()
    want_out, want_grad = float32_in_kernel_order(as_rows(a), as_rows(g), size, 1e-3, 2.0)
    assert np.array_equal(as_rows(out), want_out)
    assert np.array_equal(as_rows(x.grad), want_grad)


def test_fused_kernels_other_window_and_power(monkeypatch):
    """n=3 and beta=0.5 (powf instead of the paper's beta=0.75 shortcut), strong alpha, float32."""
    monkeypatch.setenv("ALEXNET_LRN_KERNEL", "fused")
    a = realistic((2, 8, 3, 3), torch.float32, seed=4)
    x = a.clone().requires_grad_(True)
    out = lrn(x, 3, 0.05, 0.5, 1.0)
    torch.testing.assert_close(out.double(), lrn_reference(a.double(), k=1.0, n=3, alpha=0.05, beta=0.5),
                               rtol=1e-5, atol=1e-5)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(5))
    out.backward(g)
    xr = a.double().clone().requires_grad_(True)
    (lrn_reference(xr, k=1.0, n=3, alpha=0.05, beta=0.5) * g.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-5)
    assert not KERNEL.failed


def test_bf16_input_is_normalised_in_float32():
    a = realistic((2, 8, 3, 3), torch.float32, seed=11)
    out = LRN()(a.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), lrn_reference(a.bfloat16().double()).float(), rtol=1e-2, atol=1e-2)


def test_unknown_kernel_choice_names_the_choices(monkeypatch):
    monkeypatch.setenv("ALEXNET_LRN_KERNEL", "fast")
    with pytest.raises(ValueError, match="auto, fused, eager"):
        LRN()(torch.ones(1, 3, 2, 2))


def test_bf16_fused_and_plain_kernels_agree_forward_and_backward(monkeypatch):
    a = realistic((4, 12, 5, 5), torch.float32, seed=12).bfloat16().contiguous(memory_format=torch.channels_last)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(13)).bfloat16()
    results = both_kernels(a, g, monkeypatch)
    assert all(t.dtype == torch.bfloat16 for pair in results.values() for t in pair)
    for fused, plain in zip(results["fused"], results["eager"]):
        torch.testing.assert_close(fused.float(), plain.float(), rtol=1e-2, atol=1e-3)
    # and the gradient is the formula's, to bf16 precision
    xr = a.double().clone().requires_grad_(True)
    (lrn_reference(xr) * g.double()).sum().backward()
    torch.testing.assert_close(results["fused"][1].double(), xr.grad, rtol=2e-2, atol=2e-3)


def run_probe(env: dict) -> subprocess.CompletedProcess:
    probe = ("import torch; from core.lrn import LRN, using, KERNEL\n"
             "x = torch.randn(4, 10, 6, 6, requires_grad=True)\n"
             "LRN()(x).sum().backward()\n"
             "print('ok', KERNEL.failed)")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, cwd=Path(__file__).resolve().parents[1])


def test_first_build_prints_nothing_and_is_reused(tmp_path):
    """A fresh machine's first LRN call builds the C kernels into the cache folder silently; the
    next process loads that build instead of compiling again."""
    res = run_probe({"ALEXNET_CACHE_DIR": str(tmp_path)})
    assert res.stdout.strip() == "ok False", res.stderr[-2000:]
    assert res.stderr.strip() == "", res.stderr[-2000:]
    built = sorted((tmp_path / "native").iterdir())
    assert [p.suffix for p in built] == [".so"], built   # one library, no temporary left behind
    stamp = built[0].stat().st_mtime_ns
    assert run_probe({"ALEXNET_CACHE_DIR": str(tmp_path)}).stdout.strip() == "ok False"
    assert built[0].stat().st_mtime_ns == stamp and sorted((tmp_path / "native").iterdir()) == built


def test_no_compiler_falls_back_to_plain_ops_with_one_warning(tmp_path):
    """Without a working C compiler the LRN still runs (plain ops), says so once, and leaves no
    half-built file."""
    res = run_probe({"ALEXNET_CACHE_DIR": str(tmp_path), "CC": "false"})
    assert res.stdout.strip() == "ok True", res.stderr[-2000:]
    assert res.stderr.count("RuntimeWarning: LRN: the C kernels could not be built") == 1, res.stderr[-2000:]
    assert "ALEXNET_LRN_KERNEL=eager" in res.stderr
    assert list((tmp_path / "native").iterdir()) == []
