"""preprocess.py and what it relies on: colours and modes decoded right, unreadable images left out
(named, counted, kept with the cache) or fatal with --strict, training statistics kept with the
cache; the command's normal and broken inputs."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import core.data as data_mod
from conftest import CLASSES, PREP, REPO, TRAIN_PER_CLASS
from core.data import load_image, load_split, train_stats


def red(tmp_path, mode: str, suffix: str):
    """A pure red image in `mode`, saved as `suffix`."""
    img = Image.new("RGB", (60, 40), (255, 0, 0))
    if mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode != "RGB":
        img = img.convert(mode)
    path = tmp_path / f"red-{mode}{suffix}"
    img.save(path)
    return path


@pytest.mark.parametrize("mode,suffix", [("RGB", ".JPEG"), ("RGB", ".png"), ("RGBA", ".png"), ("P", ".png"),
                                         ("CMYK", ".jpg")])
def test_a_pure_red_image_stays_red_in_every_mode(tmp_path, mode, suffix):
    x = load_image(str(red(tmp_path, mode, suffix)), 32).astype(int)
    assert x.shape == (3, 32, 32)
    assert x[0].min() >= 240 and x[1].max() <= 15 and x[2].max() <= 15, (mode, x.reshape(3, -1).mean(1))


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (40, 50), 77).save(path)
    x = load_image(str(path), 32)
    assert (x == 77).all()


def broken(root, cls=1):
    bad = root / "train" / CLASSES[cls] / "zz_broken.JPEG"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return bad


def test_unreadable_images_are_left_out_named_and_kept_with_the_cache(tiny_imagefolder, tmp_path):
    bad = broken(tiny_imagefolder)
    cache = tmp_path / "cache"
    got = load_split(tiny_imagefolder, "train", PREP, cache=str(cache), workers=1, progress=False, skip_unreadable=True)
    assert len(got.labels) == len(got.images) == len(CLASSES) * TRAIN_PER_CLASS
    assert len(got.skipped) == 1 and str(bad) in got.skipped[0]
    # the same images and labels as the folder without the broken file, but another identity
    bad.unlink()
    clean = load_split(tiny_imagefolder, "train", PREP, cache=str(tmp_path / "clean"), workers=1, progress=False)
    assert np.array_equal(np.asarray(got.images), np.asarray(clean.images)) and np.array_equal(got.labels, clean.labels)
    assert got.identity != clean.identity


def test_training_statistics_are_computed_once_and_kept_with_the_cache(tiny_data, monkeypatch):
    first = train_stats(tiny_data.train)
    monkeypatch.setattr(data_mod, "_compute_stats", lambda *a: pytest.fail("computed again"))
    again = train_stats(tiny_data.train)
    for a, b in ((first.mean_image, again.mean_image), (first.eigval, again.eigval), (first.eigvec, again.eigvec)):
        assert np.array_equal(a, b)


def preprocess(tmp_path, *args):
    return subprocess.run([sys.executable, "preprocess.py", "--profile", "smoke", "--cache-dir", str(tmp_path / "cache"),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_preprocess_builds_the_cache_that_training_then_uses(tiny_imagefolder, tmp_path):
    bad = broken(tiny_imagefolder)
    res = preprocess(tmp_path, "--data-root", str(tiny_imagefolder), "--workers", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "train: 18 images of 3 classes at 37 px, 1 unreadable left out" in res.stdout
    assert f"skipped: cannot read image {bad}" in res.stdout and "val: 9 images" in res.stdout
    folder = res.stdout.split("-> ")[1].split()[0]
    assert (tmp_path / "cache").is_dir() and (data_mod.Path(folder) / "stats.npz").is_file()
    again = preprocess(tmp_path, "--data-root", str(tiny_imagefolder))            # nothing left to do
    assert again.returncode == 0 and folder in again.stdout


def test_preprocess_strict_stops_at_the_unreadable_image_and_leaves_no_cache(tiny_imagefolder, tmp_path):
    bad = broken(tiny_imagefolder)
    res = preprocess(tmp_path, "--data-root", str(tiny_imagefolder), "--strict")
    assert res.returncode == 2 and str(bad) in res.stderr and "Traceback" not in res.stderr
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]   # no cache
    assert not list((tmp_path / "cache").glob(".*.partial"))                            # nor a partial one


def test_preprocess_bad_input_is_one_line(tmp_path):
    import contextlib
    import io
    import preprocess as command
    for args, expected in ((["--data-root", str(tmp_path / "nowhere")], "no imagenette dataset"),
                           (["--workers", "0"], "--workers must be at least 1"),
                           (["--profile", "nope"], "nope")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = command.main(["--profile", "smoke", "--cache-dir", str(tmp_path / "cache"), *args])
        assert code == 2 and expected in err.getvalue() and "Traceback" not in err.getvalue(), err.getvalue()
