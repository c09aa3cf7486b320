"""Hugging Face `datasets` as a source (`--data-root hf:<folder or name>`): a DatasetDict built
from the tiny ImageFolder and saved to disk decodes to exactly the folder's cache; a run trains
from it; a name that is neither cached nor reachable, and datasets of the wrong shape, are one
clear error."""
from __future__ import annotations

import os
import subprocess
import sys

import datasets
import numpy as np
import pytest

from conftest import CLASSES, PREP, REPO
from core.data import DataError, load_split, scan


def save_hf(root, out, val_name="validation", columns=("image", "label")):
    """The ImageFolder at `root` as a DatasetDict on disk (encoded image bytes, ClassLabel labels)."""
    image, label = columns
    features = datasets.Features({image: datasets.Image(), label: datasets.ClassLabel(names=list(CLASSES))})
    splits = {}
    for split, name in (("train", "train"), ("val", val_name)):
        samples, _ = scan(root, split)
        splits[name] = datasets.Dataset.from_dict(
            {image: [{"bytes": open(p, "rb").read(), "path": os.path.basename(p)} for p, _ in samples],
             label: [l for _, l in samples]}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(out))
    return out


def load(root, split, tmp_path, **kw):
    return load_split(root, split, PREP, cache=str(tmp_path / "cache"), workers=1, progress=False, **kw)


def test_a_saved_dataset_decodes_to_the_same_images_as_its_folder(tiny_imagefolder, tmp_path):
    hf = f"hf:{save_hf(tiny_imagefolder, tmp_path / 'hf')}"
    for split, kw in (("train", {}), ("val", {}), ("train", {"max_per_class": 2})):
        a, b = load(hf, split, tmp_path, **kw), load(tiny_imagefolder, split, tmp_path, **kw)
        assert a.classes == b.classes == CLASSES and a.root == hf
        assert np.array_equal(a.labels, b.labels)
        assert np.array_equal(np.asarray(a.images), np.asarray(b.images)), split
    again = load(hf, "train", tmp_path)
    assert again.digest == load(hf, "train", tmp_path).digest and again.identity


def test_a_run_trains_from_a_hf_dataset(tiny_imagefolder, tmp_path):
    hf = f"hf:{save_hf(tiny_imagefolder, tmp_path / 'hf')}"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    res = subprocess.run([sys.executable, "train.py", "--profile", "smoke", "--data-root", hf, "--tracking-uri", uri,
                          "--cache-dir", str(tmp_path / "cache"), "--set", "epoch_scale=0.0112"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"from {hf})" in res.stderr and "done: 1 trained" in res.stderr


def test_a_name_neither_cached_nor_reachable_is_one_clear_line(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "preprocess.py", "--profile", "smoke", "--data-root", "hf:nobody/no-such-set",
                          "--cache-dir", str(tmp_path / "cache")], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "hf:nobody/no-such-set: cannot load it from the local Hugging Face cache" in res.stderr
    assert "datasets.load_dataset('nobody/no-such-set')" in res.stderr


def test_wrong_shapes_are_named(tiny_imagefolder, tmp_path):
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        load(f"hf:{tiny_imagefolder}", "train", tmp_path)
    other = save_hf(tiny_imagefolder, tmp_path / "no-val", val_name="holdout")
    with pytest.raises(DataError, match="no val split.*holdout"):
        load(f"hf:{other}", "val", tmp_path)
    cols = save_hf(tiny_imagefolder, tmp_path / "cols", columns=("img", "fine_label"))
    with pytest.raises(DataError, match="need an `image` column"):
        load(f"hf:{cols}", "train", tmp_path)
