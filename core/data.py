"""Datasets: find the data (an ImageFolder root, or `hf:<name or folder>` for a Hugging Face
dataset: core/hfdata.py), decode every image once into a uint8 cache, compute the training-set
statistics the paper uses (mean image, §2; RGB PCA, §4.1).

Preprocessing follows §2 scaled to the profile: shorter side to `prep_size` (256 for 224 px crops),
centre crop prep_size x prep_size, RGB. The cache is one (N, 3, P, P) uint8 .npy per split,
memory-mapped at load, written to a `.partial` folder that a killed decode continues, and renamed
into place when complete (never half-written).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from .config import REPO

DATA_ENV = "ALEXNET_DATA_ROOT"
CACHE_ENV = "ALEXNET_CACHE_DIR"
CACHE_VERSION = 1
CHUNK = 1024   # images decoded between two progress records of a cache being built
# Where each dataset is looked for when neither --data-root nor $ALEXNET_DATA_ROOT is given.
DEFAULT_ROOTS = {
    "imagenette": [REPO / "data" / "imagenette2-224", REPO / "data" / "imagenette2",
                   REPO.parent / "shared" / "datasets" / "imagenette2-224"],
    "imagenet": [REPO / "data" / "imagenet"],
}
HOW_TO_GET = {
    "imagenette": "python -c \"from torchvision.datasets import Imagenette; "
                  "Imagenette('data', split='train', download=True)\"  (needs a network; gives data/imagenette2)",
    "imagenet": "extract ILSVRC-2012 train and val into data/imagenet/{train,val}/<wnid>/*.JPEG",
}


class DataError(RuntimeError):
    """Missing, empty or unreadable data; the message says how to fix it."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray        # (N, 3, P, P) uint8, usually a read-only memmap
    labels: np.ndarray        # (N,) int64
    classes: tuple[str, ...]
    root: str
    digest: str               # content key of the cache (file list, sizes, mtimes, size)
    identity: str = ""        # what the split is, wherever it lies: classes, relative paths, labels, file sizes
    skipped: tuple[str, ...] = ()   # unreadable images left out (preprocess.py), as messages
    folder: str = ""          # its cache folder


HF_PREFIX = "hf:"


def resolve_root(dataset: str, data_root: str | None = None) -> Path | str:
    """The documented order: --data-root, then $ALEXNET_DATA_ROOT, then the default folders. A
    Hugging Face source (`hf:<name or folder>`) is returned as given; it is opened by load_split."""
    given = data_root or os.environ.get(DATA_ENV)
    if given and given.startswith(HF_PREFIX):
        return given
    if data_root:
        candidates, origin = [Path(data_root)], "--data-root"
    elif os.environ.get(DATA_ENV):
        candidates, origin = [Path(os.environ[DATA_ENV])], f"${DATA_ENV}"
    else:
        candidates, origin = DEFAULT_ROOTS.get(dataset, []), "the default folders"
    for root in candidates:
        if (root / "train").is_dir() and (root / "val").is_dir():
            return root.resolve()
    tried = ", ".join(str(c) for c in candidates) or "(none)"
    raise DataError(f"no {dataset} dataset with train/ and val/ folders found in {origin}: {tried}. "
                    f"Pass --data-root DIR or set ${DATA_ENV}; to get it: {HOW_TO_GET.get(dataset, '')}")


def scan(root: Path, split: str, classes: tuple[str, ...] | None = None,
         max_per_class: int | None = None) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """List (path, label) of an ImageFolder split, sorted; classes come from train/."""
    folder = root / split
    found = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir())) if folder.is_dir() else ()
    extra = sorted(set(found) - set(classes)) if classes else []
    if extra:
        raise DataError(f"{folder} has class folder(s) that train/ lacks: {', '.join(extra[:10])}"
                        f"{' ...' if len(extra) > 10 else ''}; add them to train/ or remove them from {split}/")
    classes = classes or found
    if not classes:
        raise DataError(f"{folder} has no class folders; expected {folder}/<class>/<image>")
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in IMG_EXTENSIONS) \
            if (folder / name).is_dir() else []
        samples += [(str(p), label) for p in files[:max_per_class]]
    if not samples:
        raise DataError(f"{folder} holds no images ({', '.join(IMG_EXTENSIONS)}); check the data root")
    return samples, classes


def load_image(path: str, size: int, file: BinaryIO | None = None) -> np.ndarray:
    """Shorter side to `size`, centre crop, RGB (grayscale, palette, RGBA and CMYK become RGB):
    (3, size, size) uint8. file: the encoded image when it is not a file at `path` (which then
    only names it)."""
    try:
        with Image.open(file or path) as img:
            img.draft("RGB", (size, size))   # JPEG: decode at reduced scale when much larger
            img = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None


@dataclass(frozen=True)
class Listing:
    """One split before decoding: what its images are and how to read them."""
    root: str
    labels: np.ndarray                        # (N,) int64
    classes: tuple[str, ...]
    identity: str                             # see Split.identity
    stamp: Callable[[], Iterator[str]]        # lines that change whenever the images may have (cache key)
    images: Callable[[int], Iterator[tuple[str, BinaryIO | None]]]   # from position k: (name or path, bytes or None)


def list_folder(root: Path, split: str, classes: tuple[str, ...] | None = None,
                max_per_class: int | None = None) -> Listing:
    samples, classes = scan(root, split, classes, max_per_class)

    def stamp():
        for path, label in samples:
            st = os.stat(path)
            yield f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n"
    return Listing(str(root), np.array([l for _, l in samples], dtype=np.int64), classes,
                   _identity(root, samples, classes), stamp, lambda k: ((p, None) for p, _ in samples[k:]))


def list_split(root: Path | str, split: str, classes: tuple[str, ...] | None = None,
               max_per_class: int | None = None) -> Listing:
    if str(root).startswith(HF_PREFIX):
        from .hfdata import list_hf
        return list_hf(str(root)[len(HF_PREFIX):], split, classes, max_per_class)
    return list_folder(Path(root), split, classes, max_per_class)


def cache_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "alexnet-ablation")


def _digest(listing: Listing, size: int) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}:{size}".encode())
    for line in listing.stamp():
        h.update(line.encode())
    return h.hexdigest()[:16]


def _identity(root: Path, samples: list[tuple[str, int]], classes: tuple[str, ...]) -> str:
    """The split's identity, independent of where the folder lies and of file times: part of every
    run's config_hash, so runs on another dataset (or another subset) are other cells."""
    h = hashlib.sha1(json.dumps(list(classes)).encode())
    for path, label in samples:
        h.update(f"{Path(path).relative_to(root).as_posix()}|{label}|{os.stat(path).st_size}\n".encode())
    return h.hexdigest()[:16]


def _lock(path: Path) -> int:
    """An fd holding an exclusive flock on `path` (waits for another process that holds it)."""
    import fcntl
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _decode(args) -> tuple[np.ndarray | None, str]:
    name, size, file, skip = args
    try:
        return load_image(name, size, file), ""
    except DataError as err:
        if not skip:
            raise DataError(f"{err}. Remove or replace the file and rerun, or run preprocess.py for this "
                            f"profile first (it leaves unreadable images out)") from None
        return None, str(err)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def build_cache(listing: Listing, final: Path, split: str, size: int, workers: int | None = None,
                progress: bool = True, skip_unreadable: bool = False) -> None:
    """Decode `listing` into `final` (images.npy, labels.npy, meta.json), resumably: the work goes
    to `.<name>.partial` beside it, whose progress.json records, after every chunk is flushed, how
    far it got; a killed decode continues from there, and the folder is renamed into place only
    when complete. One process at a time builds a given cache (an flock; another waits, then uses
    the result). An unreadable image stops the decode (the partial folder is removed), or with
    `skip_unreadable` is left out and named in meta.json."""
    n = len(listing.labels)
    part = final.parent / f".{final.name}.partial"
    try:
        part.mkdir(parents=True, exist_ok=True)
        fd = _lock(part / "lock")
    except OSError as err:
        if (final / "meta.json").exists():   # finished and renamed by another process meanwhile
            return
        raise DataError(f"cannot write the image cache in {final.parent} ({err.strerror}); pass --cache-dir "
                        f"DIR (or set ${CACHE_ENV}) to a folder you can write") from None
    try:
        if (final / "meta.json").exists():
            shutil.rmtree(part, ignore_errors=True)
            return
        state_file = part / "progress.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {"next": 0, "kept": 0, "skipped": []}
        images = np.lib.format.open_memmap(part / "images.npy", "r+" if state["next"] else "w+", np.uint8,
                                           None if state["next"] else (n, 3, size, size))
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=n, initial=state["next"], desc=f"decode {split} {size}px", unit="img", leave=False)
        # threads, not processes: Pillow releases the GIL while decoding and resizing, and a forked
        # pool can deadlock once torch's threads exist; chunks bound what is held at once
        jobs = listing.images(state["next"])
        with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
            while chunk := list(itertools.islice(jobs, CHUNK)):
                for (name, _), (arr, error) in zip(chunk, pool.map(_decode, [(name, size, f, skip_unreadable)
                                                                          for name, f in chunk])):
                    if arr is None:
                        state["skipped"].append([state["next"], error])
                    else:
                        images[state["kept"]] = arr
                        state["kept"] += 1
                    state["next"] += 1
                images.flush()
                _write_json(state_file, state)
                if bar:
                    bar.update(len(chunk))
        if bar:
            bar.close()
        del images
        dropped = {i for i, _ in state["skipped"]}
        np.save(part / "labels.npy", np.array([l for i, l in enumerate(listing.labels) if i not in dropped], np.int64))
        identity = listing.identity if not dropped else hashlib.sha1(
            f"{listing.identity}|skipped {sorted(dropped)}".encode()).hexdigest()[:16]
        _write_json(part / "meta.json", {"root": listing.root, "split": split, "size": size,
                                         "classes": listing.classes, "n": n, "kept": state["kept"],
                                         "identity": identity, "skipped": [e for _, e in state["skipped"]]})
        state_file.unlink()
        (part / "lock").unlink()
        os.replace(part, final)
    except DataError:
        shutil.rmtree(part, ignore_errors=True)   # an unreadable image: the data must change first
        raise
    finally:
        os.close(fd)


def load_split(root: Path | str, split: str, size: int, classes: tuple[str, ...] | None = None,
               max_per_class: int | None = None, cache: str | None = None, workers: int | None = None,
               progress: bool = True, skip_unreadable: bool = False) -> Split:
    """The split decoded at `size`, from its cache (built first when missing: build_cache)."""
    listing = list_split(root, split, classes, max_per_class)
    digest = _digest(listing, size)
    final = cache_dir(cache) / f"{split}-{size}px-{digest}"
    if not (final / "meta.json").exists():
        build_cache(listing, final, split, size, workers, progress, skip_unreadable)
    meta = json.loads((final / "meta.json").read_text())
    kept = meta.get("kept", len(listing.labels))
    return Split(np.load(final / "images.npy", mmap_mode="r")[:kept], np.load(final / "labels.npy"),
                 tuple(listing.classes), listing.root, digest, meta.get("identity", listing.identity),
                 tuple(meta.get("skipped", ())), str(final))


@dataclass(frozen=True)
class Stats:
    mean_image: np.ndarray   # (3, P, P) float32, 0..255: the per-pixel training mean (§2)
    eigval: np.ndarray       # (3,) eigenvalues of the RGB covariance, pixels in 0..1 (fb.resnet.torch units)
    eigvec: np.ndarray       # (3, 3) eigenvectors as columns; rows R, G, B


def train_stats(train: Split, chunk: int = 512) -> Stats:
    """Mean image and RGB covariance over every training pixel, streamed in chunks (float64);
    kept in the split's cache folder (stats.npz) once computed."""
    saved = Path(train.folder) / "stats.npz" if train.folder else None
    if saved and saved.exists():
        with np.load(saved) as f:
            return Stats(f["mean_image"], f["eigval"], f["eigvec"])
    stats = _compute_stats(train, chunk)
    if saved:
        try:
            tmp = saved.with_name(f".stats.{os.getpid()}.npz")
            np.savez(tmp, mean_image=stats.mean_image, eigval=stats.eigval, eigvec=stats.eigvec)
            os.replace(tmp, saved)
        except OSError:   # a read-only cache: computed again next time
            pass
    return stats


def _compute_stats(train: Split, chunk: int) -> Stats:
    n = len(train.images)
    total = np.zeros(train.images.shape[1:], np.float64)
    s1, s2, count = np.zeros(3), np.zeros((3, 3)), 0
    for i in range(0, n, chunk):
        x = np.asarray(train.images[i:i + chunk], dtype=np.float64)
        total += x.sum(0)
        px = x.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
        s1 += px.sum(1)
        s2 += px @ px.T
        count += px.shape[1]
    mu = s1 / count
    cov = s2 / count - np.outer(mu, mu)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return Stats((total / n).astype(np.float32), eigval[order], eigvec[:, order])
