"""core/augment.py (§2, §4.1) and the 10-crop averaging of core/engine.evaluate."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from conftest import CROP, PREP, ViewLogits, tiny_profile, tta_table
from core.augment import CENTRE_VIEW, IMAGENET_MEAN, IMAGENET_STD, Pipeline, crop_flip, draw_epoch
from core.config import RunConfig
from core.engine import build_pipeline, evaluate
from core.model import AlexNet, Arch
from core.toggles import make_toggles


def pipeline(data, pca="paper", crop="paper", input_scale="paper", size=CROP):
    return Pipeline(data.stats, size, make_toggles(dict(pca=pca, crop=crop, input_scale=input_scale)))


def epoch_batch(data, n=None, seed=0, epoch=1):
    """The first n training images in the epoch's drawn order, and the draws."""
    train = data.train
    n = n or len(train.labels)
    draws = draw_epoch(len(train.labels), PREP, CROP, seed, epoch)
    return np.asarray(train.images)[draws.order.numpy()[:n]], draws


def ref_crop(x, top, left, flip, size=CROP):
    """Slicing and torch.flip: the obvious crop/mirror of one (C, P, P) image."""
    out = x[:, top:top + size, left:left + size]
    return torch.flip(out, dims=[-1]) if flip else out


# --- statistics (§2, §4.1) --------------------------------------------------------------------

def test_stats_mean_image_and_pca_match_numpy(shared_tiny_data):
    imgs = np.asarray(shared_tiny_data.train.images, dtype=np.float64)
    stats = shared_tiny_data.stats
    np.testing.assert_allclose(stats.mean_image, imgs.mean(0), rtol=0, atol=1e-3)
    px = imgs.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    cov = np.cov(px, bias=True)
    val, vec = np.linalg.eigh(cov)
    val, vec = val[::-1], vec[:, ::-1]
    np.testing.assert_allclose(stats.eigval, val, rtol=1e-6, atol=1e-10)
    assert np.all(np.diff(stats.eigval) <= 0)                      # descending: p1 is the main one
    for j in range(3):                                               # columns, up to sign
        assert abs(abs(float(stats.eigvec[:, j] @ vec[:, j])) - 1) < 1e-6
    np.testing.assert_allclose(stats.eigvec @ np.diag(stats.eigval) @ stats.eigvec.T, cov, atol=1e-10)


def test_paper_lighting_is_one_rgb_shift_per_image(shared_tiny_data):
    images, draws = epoch_batch(shared_tiny_data, 9)
    lit = pipeline(shared_tiny_data, pca="paper").train_batch(images, draws, 0)
    plain = pipeline(shared_tiny_data, pca="none").train_batch(images, draws, 0)
    diff = (lit - plain).double()                                    # (B, 3, S, S)
    s = shared_tiny_data.stats
    for i in range(len(images)):
        alpha = draws.alphas[i].double().numpy()
        expected = s.eigvec @ (alpha * s.eigval) * 255.0             # §4.1, in 0..255 units
        per_pixel = diff[i].reshape(3, -1)
        np.testing.assert_allclose(per_pixel.numpy(), np.repeat(expected[:, None], per_pixel.shape[1], 1),
                                   atol=2e-3)
    assert diff.abs().max() > 0.1                                    # a real shift


def test_alphas_are_normal_0_01():
    a = draw_epoch(20000, PREP, CROP, seed=1, epoch=1).alphas
    assert a.shape == (20000, 3)
    assert abs(a.mean().item()) < 0.005 and a.std().item() == pytest.approx(0.1, rel=0.03)


# --- FancyPCA (the seed's) ---------------------------------------------------------------------

def albumentations_1_3_fancy_pca(img_hwc: np.ndarray, alpha: float) -> np.ndarray:
    """albumentations 1.3.0 `functional.fancy_pca` (the version the seed pinned), written from its
    source for one HWC uint8 image, as the reference the batched version must match."""
    orig = img_hwc.astype(float).copy()
    rs = (img_hwc / 255.0).reshape(-1, 3)
    centred = rs - rs.mean(0)
    vals, vecs = np.linalg.eigh(np.cov(centred, rowvar=False))
    order = vals[::-1].argsort()
    vals[::-1].sort()
    vecs = vecs[:, order]
    add = vecs @ (alpha * vals)
    for c in range(3):
        orig[..., c] += add[c] * 255
    return np.clip(orig, 0.0, 255.0).astype(np.uint8)


def test_fancy_pca_changes_about_half_and_stays_in_uint8_range():
    big = draw_epoch(4000, PREP, CROP, seed=0, epoch=1)
    assert big.fancy.float().mean().item() == pytest.approx(0.5, abs=0.03)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (40, 3, PREP, PREP))).float()
    apply, alpha = big.fancy[:40], big.alphas[:40, 0] * 20      # large alphas: every drawn image moves
    out = Pipeline.fancy_pca(images, apply, alpha)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
    assert torch.equal(out, out.round())                         # integers, as the seed's uint8
    changed = (out != images).flatten(1).any(1)
    assert not changed[~apply].any()                             # p: untouched when not drawn
    assert changed[apply].all()


def test_fancy_pca_matches_albumentations_1_3_per_image():
    """One RGB shift per image from the image's own PCA, scalar alpha, clip, truncation."""
    yy, xx = np.mgrid[0:PREP, 0:PREP]
    lum = 40 + 170 * (0.6 * yy + 0.4 * xx) / (PREP - 1)
    rng = np.random.default_rng(1)
    imgs, alphas = [], [0.7, -0.4, 0.05, 2.5]
    for k in range(len(alphas)):
        img = np.stack([lum, 0.8 * lum + 20 + 5 * k, 0.6 * lum + 30]) + rng.normal(0, 4 + k, (3, PREP, PREP))
        imgs.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    batch = torch.from_numpy(np.stack(imgs)).float()
    out = Pipeline.fancy_pca(batch, torch.ones(len(alphas), dtype=torch.bool), torch.tensor(alphas))
    for k, alpha in enumerate(alphas):
        expected = albumentations_1_3_fancy_pca(imgs[k].transpose(1, 2, 0), alpha).transpose(2, 0, 1)
        got = out[k].numpy().astype(np.uint8)
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1   # float rounding at .0 edges
        assert (got == expected).mean() > 0.99
    shift = out[0] - batch[0]                                     # far from clipping: one shift per image
    assert (shift.flatten(1).max(1).values - shift.flatten(1).min(1).values).max() <= 1


def test_fancy_pca_pipeline_touches_only_drawn_images(shared_tiny_data):
    images, draws = epoch_batch(shared_tiny_data)
    fancy = pipeline(shared_tiny_data, pca="fancy_pca").train_batch(images, draws, 0)
    plain = pipeline(shared_tiny_data, pca="none").train_batch(images, draws, 0)
    for f, p, drawn in zip(fancy, plain, draws.fancy[:len(images)].tolist()):
        if not drawn:
            assert torch.equal(f, p)


# --- crops and draws ---------------------------------------------------------------------------

def test_draws_are_paired_by_seed_and_epoch():
    a, b = draw_epoch(50, PREP, CROP, 3, 2), draw_epoch(50, PREP, CROP, 3, 2)
    for f in dataclasses.fields(a):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name
    for other in (draw_epoch(50, PREP, CROP, 4, 2), draw_epoch(50, PREP, CROP, 3, 3)):
        assert not torch.equal(a.order, other.order)
        assert not torch.equal(a.offsets, other.offsets)
        assert not torch.equal(a.alphas, other.alphas)
        assert not torch.equal(a.flips, other.flips)
    assert sorted(a.order.tolist()) == list(range(50))
    assert a.offsets.min() >= 0 and a.offsets.max() <= PREP - CROP
    big = draw_epoch(4000, PREP, CROP, 0, 1)
    assert set(big.offsets.unique().tolist()) == set(range(PREP - CROP + 1))   # every offset reachable
    assert big.flips.float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_crop_flip_matches_slicing_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 12, 12), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 12 - 5 + 1, (6, 2), generator=g)
    flips = torch.tensor([True, False, True, False, True, False])
    out = crop_flip(x, offsets, flips, 5)
    assert out.shape == (6, 3, 5, 5)
    for i in range(6):
        assert torch.equal(out[i], ref_crop(x[i], *offsets[i].tolist(), bool(flips[i]), 5))


def test_crop_flip_of_an_expanded_mean_image():
    """The training mean image goes through crop_flip as a stride-0 batch view."""
    g = torch.Generator().manual_seed(1)
    mean = torch.rand(3, 9, 9, generator=g) * 255
    offsets = torch.randint(0, 9 - 4 + 1, (5, 2), generator=g)
    flips = torch.tensor([True, True, False, False, True])
    out = crop_flip(mean.expand(5, -1, -1, -1), offsets, flips, 4)
    for i in range(5):
        assert torch.equal(out[i], ref_crop(mean, *offsets[i].tolist(), bool(flips[i]), 4))


@pytest.mark.parametrize("input_scale", ["paper", "unit_std"])
def test_paper_train_crop_and_input_scale(shared_tiny_data, input_scale):
    images, draws = epoch_batch(shared_tiny_data, 10)
    out = pipeline(shared_tiny_data, pca="none", input_scale=input_scale).train_batch(images, draws, 0)
    assert out.shape == (10, 3, CROP, CROP) and out.dtype == torch.float32
    mean_image = torch.from_numpy(shared_tiny_data.stats.mean_image).double()
    m = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    s = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    for i in range(10):
        top, left = draws.offsets[i].tolist()
        x = torch.from_numpy(images[i]).double()
        if input_scale == "paper":      # raw 0..255 minus the training mean image, no /255
            expected = ref_crop(x - mean_image, top, left, bool(draws.flips[i]))
        else:
            expected = ref_crop((x / 255 - m) / s, top, left, bool(draws.flips[i]))
        torch.testing.assert_close(out[i].double(), expected, rtol=1e-5, atol=1e-4)
    if input_scale == "paper":
        assert out.abs().max() > 20     # still on the 0..255 scale


@pytest.mark.parametrize("pca", ["paper", "none"])
@pytest.mark.parametrize("input_scale", ["paper", "unit_std"])
def test_c_crop_gives_the_torch_ops_floats(shared_tiny_data, monkeypatch, pca, input_scale):
    """On the CPU the paper crop, lighting and scaling run as one C loop (core/augment.c): the same
    floats, bit for bit, as the torch ops that every other device uses, laid out channels_last."""
    images, draws = epoch_batch(shared_tiny_data, 12)
    pipe = pipeline(shared_tiny_data, pca=pca, input_scale=input_scale)
    fused = pipe.train_batch(images, draws, 3)
    assert fused.is_contiguous(memory_format=torch.channels_last) and not fused.is_contiguous()
    views = pipe.eval_views(images, ten_crop=True)
    monkeypatch.setattr(Pipeline, "crop_normalise", lambda *args: None)   # the torch ops
    plain = pipe.train_batch(images, draws, 3)
    assert plain.is_contiguous() and torch.equal(fused, plain)
    assert all(torch.equal(v, w) for v, w in zip(views, pipe.eval_views(images, ten_crop=True)))


def test_a_library_that_cannot_be_built_warns_once_and_leaves_nothing(tmp_path, monkeypatch):
    from core import native
    monkeypatch.setenv("ALEXNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    lib = native.Library("augment.c", {}, "Augmentation")
    with pytest.warns(RuntimeWarning, match="Augmentation: the C kernels could not be built"):
        assert lib.get() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # no second attempt, no second warning
        assert lib.get() is None and lib.failed
    assert list((tmp_path / "native").iterdir()) == []


def test_random_resized_crop_boxes(shared_tiny_data):
    """Ramp images reveal each crop box: area fraction in [0.08, 1], aspect ratio in [3/4, 4/3]."""
    p, n, s = 100, 150, CROP
    ramp = torch.arange(p, dtype=torch.float32)
    x = torch.zeros(n, 3, p, p)
    x[:, 0] = ramp[:, None]            # channel 0: row index
    x[:, 1] = ramp[None, :]            # channel 1: column index
    u = draw_epoch(n, p, s, seed=0, epoch=1).rrc
    out = pipeline(shared_tiny_data, crop="random_resized").random_resized(x, u).double()
    assert out.shape == (n, 3, s, s)
    lo, hi = 2, s - 3                  # interior samples: exact on a linear ramp
    areas, ratios = [], []
    for i in range(n):
        rows, cols = out[i, 0, :, s // 2], out[i, 1, s // 2, :]
        ch = (rows[hi] - rows[lo]).item() * s / (hi - lo)
        cw = (cols[hi] - cols[lo]).item() * s / (hi - lo)
        assert abs(ch - round(ch)) < 0.25 and abs(cw - round(cw)) < 0.25   # (antialias: not exact)
        ch, cw = round(ch), round(cw)
        top = rows[lo].item() - ((lo + 0.5) * ch / s - 0.5)
        left = cols[lo].item() - ((lo + 0.5) * cw / s - 0.5)
        assert -0.3 < top and top + ch < p + 0.3 and -0.3 < left and left + cw < p + 0.3
        areas.append(ch * cw / p ** 2)
        ratios.append(cw / ch)
    areas, ratios = np.array(areas), np.array(ratios)
    assert areas.min() >= 0.08 - 0.01 and areas.max() <= 1.0
    assert ratios.min() >= 0.75 - 0.02 and ratios.max() <= 4 / 3 + 0.02
    # and the whole range is used
    assert areas.min() < 0.2 and areas.max() > 0.8 and ratios.min() < 0.8 and ratios.max() > 1.25


def test_random_resized_train_batch(shared_tiny_data):
    images, draws = epoch_batch(shared_tiny_data, 8)
    rrc = pipeline(shared_tiny_data, crop="random_resized").train_batch(images, draws, 0)
    assert rrc.shape == (8, 3, CROP, CROP) and torch.isfinite(rrc).all()
    same_image = np.repeat(images[:1], 8, 0)
    crops = pipeline(shared_tiny_data, crop="random_resized", pca="none").train_batch(same_image, draws, 0)
    assert len({c.numpy().tobytes() for c in crops}) == 8            # one image, eight different crops


def test_non_data_toggle_gives_identical_batches(shared_tiny_data):
    prof = tiny_profile()
    batches = []
    for toggles in ({}, {"lrn": False}, {"init": "pytorch", "lr_schedule": "plateau", "groups": 1}):
        pipe = build_pipeline(RunConfig(prof, make_toggles(toggles), seed=5), shared_tiny_data.stats)
        images, draws = epoch_batch(shared_tiny_data, seed=5, epoch=2)
        batches.append(torch.cat([pipe.train_batch(images[i:i + 4], draws, i) for i in range(0, len(images), 4)]))
    assert torch.equal(batches[0], batches[1]) and torch.equal(batches[0], batches[2])
    other_seed = pipeline(shared_tiny_data).train_batch(*epoch_batch(shared_tiny_data, seed=6, epoch=2), 0)
    assert not torch.equal(batches[0], other_seed)


# --- evaluation views (§4.1) -------------------------------------------------------------------

def test_ten_views_are_corners_centre_and_mirrors(shared_tiny_data):
    images = np.array(shared_tiny_data.val.images[:4])
    views = pipeline(shared_tiny_data).eval_views(images, ten_crop=True)
    assert len(views) == 10
    mean_image = torch.from_numpy(shared_tiny_data.stats.mean_image).double()
    x = torch.from_numpy(images).double() - mean_image
    e, c = PREP - CROP, (PREP - CROP) // 2
    expected = [torch.stack([ref_crop(xi, t, l, f) for xi in x])
                for f in (False, True) for t, l in ((0, 0), (0, e), (e, 0), (e, e), (c, c))]
    unmatched = list(range(10))
    for v in views:
        assert v.shape == (4, 3, CROP, CROP)
        hit = [j for j in unmatched if torch.allclose(v.double(), expected[j], atol=1e-4)]
        assert len(hit) == 1
        unmatched.remove(hit[0])
    assert unmatched == []


@pytest.mark.parametrize("input_scale", ["paper", "unit_std"])
def test_centre_view_is_centre_crop_of_normalised_image(shared_tiny_data, input_scale):
    images = np.array(shared_tiny_data.val.images[:3])
    (view,) = pipeline(shared_tiny_data, input_scale=input_scale).eval_views(images, ten_crop=False)
    x = torch.from_numpy(images).double()
    if input_scale == "paper":
        norm = x - torch.from_numpy(shared_tiny_data.stats.mean_image).double()
    else:
        norm = (x / 255 - torch.tensor(IMAGENET_MEAN).double().view(1, 3, 1, 1)) \
            / torch.tensor(IMAGENET_STD).double().view(1, 3, 1, 1)
    c = (PREP - CROP) // 2
    torch.testing.assert_close(view.double(), norm[:, :, c:c + CROP, c:c + CROP], rtol=1e-5, atol=1e-4)


# --- 10-crop averaging (§4.1: softmax outputs; the seed: logits) -----------------------------

@pytest.mark.parametrize("average", ["softmax", "logits"])
def test_tta_average_follows_its_formula(shared_tiny_data, average):
    val = shared_tiny_data.val
    table = tta_table(val.labels, len(val.classes))
    model = ViewLogits(table)
    got = evaluate(model, pipeline(shared_tiny_data), val, batch_size=len(val.labels), ten_crop=True,
                   average=average, channels_last=False)
    assert model.calls == 10
    t = table.double().numpy()
    soft = np.exp(t - t.max(-1, keepdims=True))
    soft = (soft / soft.sum(-1, keepdims=True)).mean(0)
    pred_soft, pred_logit = soft.argmax(-1), t.mean(0).argmax(-1)
    assert np.mean(pred_soft != val.labels) != np.mean(pred_logit != val.labels)   # a discriminating example
    pred = pred_soft if average == "softmax" else pred_logit
    assert got["val10_top1_err"] == pytest.approx(np.mean(pred != val.labels))
    assert got["val10_top5_err"] == 0.0                               # 3 classes: always in the top 5


def test_ten_crop_evaluation_also_scores_its_centre_view(shared_tiny_data):
    """The centre crop's errors come out of the 10-view pass: view CENTRE_VIEW's logits, and the
    same numbers a centre-only evaluation of a real model gives."""
    val = shared_tiny_data.val
    table = tta_table(val.labels, len(val.classes))
    got = evaluate(ViewLogits(table), pipeline(shared_tiny_data), val, batch_size=len(val.labels), ten_crop=True,
                   channels_last=False)
    assert got["val_top1_err"] == pytest.approx(np.mean(table[CENTRE_VIEW].argmax(-1).numpy() != val.labels))
    views = ViewLogits(table)
    evaluate(views, pipeline(shared_tiny_data), val, batch_size=len(val.labels), ten_crop=True, channels_last=False)
    centre = ViewLogits(table)
    evaluate(centre, pipeline(shared_tiny_data), val, batch_size=len(val.labels), ten_crop=False, channels_last=False)
    assert torch.equal(views.seen[CENTRE_VIEW], centre.seen[0])          # the same input floats
    torch.manual_seed(0)
    model = AlexNet(Arch(image_size=CROP, width=0.125, stem=(5, 2, 1), num_classes=len(val.classes))).eval()
    both = evaluate(model, pipeline(shared_tiny_data), val, batch_size=4, ten_crop=True)
    one = evaluate(model, pipeline(shared_tiny_data), val, batch_size=4, ten_crop=False)
    assert {k: both[k] for k in one} == one


def test_single_view_evaluation(shared_tiny_data):
    val = shared_tiny_data.val
    logits = torch.zeros(1, len(val.labels), len(val.classes))
    logits[0, torch.arange(len(val.labels)), torch.from_numpy((val.labels + 1) % 3)] = 1.0
    logits[0, :3] = 0.0
    logits[0, torch.arange(3), torch.from_numpy(val.labels[:3])] = 1.0     # 3 of 9 right
    model = ViewLogits(logits)
    got = evaluate(model, pipeline(shared_tiny_data), val, batch_size=64, ten_crop=False, channels_last=False)
    assert model.calls == 1
    assert got == {"val_top1_err": pytest.approx(6 / 9), "val_top5_err": 0.0}
