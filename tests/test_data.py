"""core/data.py: finding the data, decoding it once (§2 preprocessing) and failing clearly."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import core.data as data_mod
from conftest import CLASSES, PREP, TRAIN_PER_CLASS, VAL_PER_CLASS, write_imagefolder
from core.data import DataError, load_image, load_split, resolve_root, scan


def split(root, name, cache, **kw):
    return load_split(root, name, PREP, cache=str(cache), workers=1, progress=False, **kw)


# --- finding the root -------------------------------------------------------------------------

def test_resolve_root_order(tmp_path, monkeypatch):
    explicit, env, default = (write_imagefolder(tmp_path / n) for n in ("explicit", "env", "default"))
    monkeypatch.setitem(data_mod.DEFAULT_ROOTS, "imagenette", [tmp_path / "missing", default])
    monkeypatch.setenv("ALEXNET_DATA_ROOT", str(env))
    assert resolve_root("imagenette", str(explicit)) == explicit.resolve()
    assert resolve_root("imagenette") == env.resolve()
    monkeypatch.delenv("ALEXNET_DATA_ROOT")
    assert resolve_root("imagenette") == default.resolve()


def test_missing_root_message_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("ALEXNET_DATA_ROOT", raising=False)
    monkeypatch.setitem(data_mod.DEFAULT_ROOTS, "imagenette", [tmp_path / "nowhere"])
    for args in ((), (str(tmp_path / "also-nowhere"),)):
        with pytest.raises(DataError) as err:
            resolve_root("imagenette", *args)
        msg = str(err.value)
        assert "--data-root" in msg and "ALEXNET_DATA_ROOT" in msg and "Imagenette" in msg
    monkeypatch.setenv("ALEXNET_DATA_ROOT", str(tmp_path / "env-nowhere"))
    with pytest.raises(DataError, match="env-nowhere"):
        resolve_root("imagenette")


def test_root_needs_train_and_val(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError):
        resolve_root("imagenette", str(tmp_path))


# --- scanning ---------------------------------------------------------------------------------

def test_scan_lists_classes_and_labels(tiny_imagefolder):
    samples, classes = scan(tiny_imagefolder, "train")
    assert classes == CLASSES
    assert len(samples) == len(CLASSES) * TRAIN_PER_CLASS
    for path, label in samples:
        assert Path(path).parent.name == CLASSES[label]
    assert any(p.endswith(".png") for p, _ in samples)
    limited, _ = scan(tiny_imagefolder, "train", max_per_class=2)
    assert [l for _, l in limited] == [0, 0, 1, 1, 2, 2]


def test_empty_split_raises(tmp_path):
    root = tmp_path / "root"
    for c in CLASSES:
        (root / "val" / c).mkdir(parents=True)
        (root / "val" / c / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no images"):
        scan(root, "val")
    (root / "train").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        scan(root, "train")
    with pytest.raises(DataError):
        load_split(root, "val", PREP, cache=str(tmp_path / "cache"), workers=1, progress=False)


# --- decoding (§2: shorter side to P, centre crop P x P, RGB) ----------------------------------

def test_grayscale_becomes_three_identical_channels(tiny_imagefolder):
    gray = tiny_imagefolder / "train" / CLASSES[0] / "img1.JPEG"
    assert Image.open(gray).mode == "L"
    arr = load_image(str(gray), PREP)
    assert arr.shape == (3, PREP, PREP) and arr.dtype == np.uint8
    assert np.array_equal(arr[0], arr[1]) and np.array_equal(arr[0], arr[2])
    assert arr.std() > 0


@pytest.mark.parametrize("wide", [True, False])
def test_shorter_side_resize_and_centre_crop(tmp_path, wide):
    """An 80x40 image whose centre 40x40 square is green and whose outer quarters are red and
    blue: the centre crop keeps only the green square, resized to 20x20 (a factor 1/2). A 10x10
    marker inside the square must land, halved, at the matching place of the output."""
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:60] = (0, 200, 0)
    a[:, 60:] = (0, 0, 255)
    a[10:20, 25:35] = (0, 200, 100)     # crop-local rows 10..19, columns 5..14
    if not wide:
        a = a.transpose(1, 0, 2).copy()
    path = tmp_path / "stripes.png"
    Image.fromarray(a).save(path)
    out = load_image(str(path), 20).astype(np.float64)   # (3, 20, 20)
    assert out.shape == (3, 20, 20)
    inner = np.zeros((20, 20), bool)    # the outermost pixels may blend with their neighbours
    inner[1:19, 1:19] = True            # outside the crop, as with Resize + CenterCrop
    marker = out[2] > 50
    green = inner & ~(np.abs(out[2]) > 2)
    assert np.abs(out[:, green] - np.array([0, 200, 0])[:, None]).max() <= 3     # no red or blue inside
    assert np.abs(out[:, [0, 19]] - np.array([0, 200, 0])[:, None, None]).max() < 100
    # the marker: a quarter of its area, centred at half its crop-local centre (15, 10) - 0.5
    mass = out[2, 1:19, 1:19]
    assert mass.sum() == pytest.approx(100 * 5 * 5, rel=0.08)
    rows, cols = np.mgrid[1:19, 1:19]
    centre = ((rows * mass).sum() / mass.sum(), (cols * mass).sum() / mass.sum())
    expected = (7.0, 4.5) if wide else (4.5, 7.0)
    assert centre == pytest.approx(expected, abs=0.3)
    assert marker.sum() == pytest.approx(25, abs=8)


def test_odd_sizes_all_become_p_by_p(tiny_data, tiny_imagefolder):
    train, val = tiny_data.train, tiny_data.val
    assert train.images.shape == (len(CLASSES) * TRAIN_PER_CLASS, 3, PREP, PREP)
    assert val.images.shape == (len(CLASSES) * VAL_PER_CLASS, 3, PREP, PREP)
    assert train.images.dtype == np.uint8 and train.classes == val.classes == CLASSES
    assert list(train.labels) == [l for l in range(3) for _ in range(TRAIN_PER_CLASS)]
    samples, _ = scan(tiny_imagefolder, "train")
    for i, (path, _) in enumerate(samples):
        assert np.array_equal(train.images[i], load_image(path, PREP)), path


# --- the cache --------------------------------------------------------------------------------

def test_cache_is_reused(tiny_imagefolder, tmp_path):
    cache = tmp_path / "cache"
    first = split(tiny_imagefolder, "train", cache)
    entries = sorted(p.name for p in cache.iterdir())
    npy = cache / entries[0] / "images.npy"
    stamp = npy.stat().st_mtime_ns
    os.utime(npy, ns=(stamp - 10 ** 9, stamp - 10 ** 9))        # an older mtime: any rewrite shows
    stamp = npy.stat().st_mtime_ns
    second = split(tiny_imagefolder, "train", cache)
    assert second.digest == first.digest
    assert npy.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in cache.iterdir()) == entries
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
    # a changed file is a new cache entry
    victim = tiny_imagefolder / "train" / CLASSES[2] / "img0.JPEG"
    Image.new("RGB", (41, 43), (1, 2, 3)).save(victim)
    third = split(tiny_imagefolder, "train", cache)
    assert third.digest != first.digest and len(list(cache.iterdir())) == 2


def test_broken_image_names_the_file_and_leaves_no_partial_cache(tiny_imagefolder, tmp_path):
    cache = tmp_path / "cache"
    bad = tiny_imagefolder / "train" / CLASSES[1] / "zz_broken.JPEG"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as err:
        split(tiny_imagefolder, "train", cache)
    assert str(bad) in str(err.value)
    leftovers = list(cache.iterdir()) if cache.exists() else []
    assert leftovers == [], f"partial cache entries left: {leftovers}"
    # once the file is fixed, the same call works and leaves exactly one complete entry
    bad.unlink()
    good = split(tiny_imagefolder, "train", cache)
    (entry,) = cache.iterdir()
    assert (entry / "images.npy").is_file() and (entry / "labels.npy").is_file()
    assert len(good.labels) == len(CLASSES) * TRAIN_PER_CLASS


def test_truncated_jpeg_is_a_data_error(tiny_imagefolder, tmp_path):
    path = tiny_imagefolder / "val" / CLASSES[0] / "img0.JPEG"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match="img0.JPEG"):
        split(tiny_imagefolder, "val", tmp_path / "cache")


SLOW_DECODE = """
import sys, time
import core.data as d
real = d._decode
def slow(args):
    time.sleep(0.3)
    return real(args)
d._decode = slow
d.CHUNK = 4
d.load_split(d.Path(sys.argv[1]), "train", int(sys.argv[3]), cache=sys.argv[2], workers=1, progress=False)
"""


def test_a_decode_killed_with_kill_9_continues_where_it_stopped(tiny_imagefolder, tmp_path, monkeypatch):
    """A decode killed with SIGKILL leaves its .partial folder with the progress of every flushed
    chunk; the next load_split continues from there (decoding only the rest) and gives exactly the
    uninterrupted result, with nothing left beside the one complete entry."""
    import json
    import signal
    import subprocess
    import sys
    import time
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DECODE, str(tiny_imagefolder), str(cache), str(PREP)])
    deadline = time.time() + 120
    progress = lambda: list(cache.glob(".*.partial/progress.json")) if cache.exists() else []
    while not progress():
        assert time.time() < deadline and proc.poll() is None, "the decode never wrote its progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)                  # after its first chunk, mid-way through the next
    proc.wait()
    done = json.loads(progress()[0].read_text())["next"]
    assert 0 < done < len(CLASSES) * TRAIN_PER_CLASS
    decoded = []
    real = data_mod._decode
    monkeypatch.setattr(data_mod, "_decode", lambda args: decoded.append(args[0]) or real(args))
    resumed = split(tiny_imagefolder, "train", cache)
    assert len(decoded) == len(CLASSES) * TRAIN_PER_CLASS - done      # only the rest was decoded
    assert [p.name for p in cache.iterdir()] == [f"train-{PREP}px-{resumed.digest}"]
    whole = split(tiny_imagefolder, "train", tmp_path / "other")
    assert np.array_equal(np.asarray(resumed.images), np.asarray(whole.images))
    assert np.array_equal(resumed.labels, whole.labels) and resumed.identity == whole.identity
