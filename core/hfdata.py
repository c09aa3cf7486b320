"""Hugging Face `datasets` as a data source: `--data-root hf:<name or folder>`.

Image-classification datasets with an `image` column (datasets.Image) and a `label` column
(datasets.ClassLabel), the layout of `ILSVRC/imagenet-1k`: a folder written by `save_to_disk`,
or a dataset name, read from the local Hugging Face cache (downloaded first where the Hub can be
reached and the dataset's terms allow). Split `train` is the dataset's train split; `val` is its
`validation` (else `val`, else `test`). Class names come from the label feature. The images are
decoded by core/data.py into the same uint8 cache as an ImageFolder's, with the same digest and
identity rules: the identity covers the class names, the labels and every image's size in bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from .data import DataError, Listing

SPLITS = {"train": ("train",), "val": ("validation", "val", "valid", "test")}
READ_CHUNK = 256   # rows read from the Arrow table at a time


def open_dataset(spec: str):
    """A DatasetDict (or Dataset) from a `save_to_disk` folder or a dataset name."""
    try:
        import datasets
    except ImportError:
        raise DataError("--data-root hf:... needs the `datasets` package: pip install datasets") from None
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if Path(spec).is_dir():
        try:
            return datasets.load_from_disk(spec)
        except (FileNotFoundError, ValueError) as err:
            raise DataError(f"hf:{spec} is a folder but not one written by datasets' save_to_disk ({err}); "
                            f"pass an ImageFolder root without hf:, or a save_to_disk folder") from None
    try:
        return datasets.load_dataset(spec)
    except Exception as err:   # not cached and no network, no such dataset, gated without a token
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise DataError(f"hf:{spec}: cannot load it from the local Hugging Face cache ({datasets.config.HF_DATASETS_CACHE}) "
                        f"or the Hub ({type(err).__name__}: {first}). On a machine with a network run "
                        f"`python -c \"import datasets; datasets.load_dataset('{spec}')\"` (log in first for gated "
                        f"datasets) and point HF_HOME at that cache, or pass a save_to_disk folder as hf:/path") from None


def pick_split(dd, spec: str, split: str):
    if not hasattr(dd, "keys"):   # a single Dataset saved without splits
        raise DataError(f"hf:{spec} holds one split only; save a DatasetDict with 'train' and 'validation'")
    for name in SPLITS[split]:
        if name in dd:
            return dd[name]
    raise DataError(f"hf:{spec} has no {split} split (looked for {', '.join(SPLITS[split])}; it has "
                    f"{', '.join(dd.keys())})")


def list_hf(spec: str, split: str, classes: tuple[str, ...] | None = None,
            max_per_class: int | None = None) -> Listing:
    import datasets
    import pyarrow.compute as pc
    ds = pick_split(open_dataset(spec), spec, split)
    image, label = ds.features.get("image"), ds.features.get("label")
    if not isinstance(image, datasets.Image) or not isinstance(label, datasets.ClassLabel):
        raise DataError(f"hf:{spec} [{split}]: need an `image` column (Image) and a `label` column (ClassLabel); "
                        f"it has {dict((k, type(v).__name__) for k, v in ds.features.items())}")
    names = tuple(label.names)
    if classes and names != tuple(classes):
        raise DataError(f"hf:{spec}: the {split} split's class names differ from train's; use one DatasetDict")
    ds = ds.flatten_indices() if ds._indices is not None else ds
    all_labels = np.asarray(ds.data.column("label").to_numpy(zero_copy_only=False), dtype=np.int64)
    if max_per_class:
        rows = np.sort(np.concatenate([np.flatnonzero(all_labels == c)[:max_per_class] for c in range(len(names))]))
    else:
        rows = np.arange(len(ds))
    if not len(rows):
        raise DataError(f"hf:{spec} [{split}] holds no images")
    labels = all_labels[rows]
    sizes = pc.binary_length(pc.struct_field(ds.data.column("image"), "bytes")).to_numpy(zero_copy_only=False)
    h = hashlib.sha1(json.dumps(list(names)).encode())
    h.update(labels.tobytes())
    h.update(np.nan_to_num(sizes[rows].astype(np.float64), nan=-1).tobytes())
    identity = h.hexdigest()[:16]
    raw = ds.cast_column("image", datasets.Image(decode=False))

    def images(first: int = 0):
        for start in range(first, len(rows), READ_CHUNK):
            idx = rows[start:start + READ_CHUNK]
            for i, cell in zip(idx, raw[idx.tolist()]["image"]):
                name = cell.get("path") or f"hf:{spec}[{split}][{i}]"
                yield (name, io.BytesIO(cell["bytes"])) if cell.get("bytes") else (cell["path"], None)

    def stamp():
        yield f"hf:{spec}|{split}|{ds._fingerprint}|{identity}|{hashlib.sha1(rows.tobytes()).hexdigest()}\n"
    return Listing(f"hf:{spec}", labels, names, identity, stamp, images)
