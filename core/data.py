"""Datasets: find the ImageFolder root, decode every image once into a uint8 cache, compute the
training-set statistics the paper uses (mean image, §2; RGB PCA, §4.1).

Preprocessing follows §2 scaled to the profile: shorter side to `prep_size` (256 for 224 px crops),
centre crop prep_size x prep_size, RGB. The cache is one (N, 3, P, P) uint8 .npy per split,
memory-mapped at load, written to a temporary folder and renamed into place (never half-written).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from .config import REPO

DATA_ENV = "ALEXNET_DATA_ROOT"
CACHE_ENV = "ALEXNET_CACHE_DIR"
CACHE_VERSION = 1
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


def resolve_root(dataset: str, data_root: str | None = None) -> Path:
    """The documented order: --data-root, then $ALEXNET_DATA_ROOT, then the default folders."""
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


def load_image(path: str, size: int) -> np.ndarray:
    """Shorter side to `size`, centre crop, RGB (grayscale becomes 3 channels): (3, size, size) uint8."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))   # JPEG: decode at reduced scale when much larger
            img = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}. Remove or replace the file, then rerun") from None


def _load(args):
    return load_image(*args)


def cache_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "alexnet-ablation")


def _digest(samples: list[tuple[str, int]], size: int) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}:{size}".encode())
    for path, label in samples:
        st = os.stat(path)
        h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _identity(root: Path, samples: list[tuple[str, int]], classes: tuple[str, ...]) -> str:
    """The split's identity, independent of where the folder lies and of file times: part of every
    run's config_hash, so runs on another dataset (or another subset) are other cells."""
    h = hashlib.sha1(json.dumps(list(classes)).encode())
    for path, label in samples:
        h.update(f"{Path(path).relative_to(root).as_posix()}|{label}|{os.stat(path).st_size}\n".encode())
    return h.hexdigest()[:16]


def _owner(pid: int) -> str:
    return f"{socket.gethostname()}-pid{pid}"


def sweep_orphans(folder: Path) -> list[Path]:
    """Remove temporary cache folders left by a killed process (kill -9 while decoding) on this
    host: `.<name>.<host>-pid<N>.<random>` whose process N no longer exists. Returns them."""
    mine = re.compile(rf"\..+\.{re.escape(socket.gethostname())}-pid(\d+)\..+")
    removed = []
    for tmp in folder.glob(".*"):
        found = mine.fullmatch(tmp.name)
        if not found:
            continue
        try:
            os.kill(int(found.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
        except PermissionError:   # alive, another user's
            pass
    return removed


def load_split(root: Path, split: str, size: int, classes: tuple[str, ...] | None = None,
               max_per_class: int | None = None, cache: str | None = None, workers: int | None = None,
               progress: bool = True) -> Split:
    samples, classes = scan(root, split, classes, max_per_class)
    digest = _digest(samples, size)
    final = cache_dir(cache) / f"{split}-{size}px-{digest}"
    if not (final / "images.npy").exists():
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            sweep_orphans(final.parent)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{_owner(os.getpid())}.", dir=final.parent))
        except OSError as err:
            raise DataError(f"cannot write the image cache in {final.parent} ({err.strerror}); pass --cache-dir "
                            f"DIR (or set ${CACHE_ENV}) to a folder you can write") from None
        try:
            images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (len(samples), 3, size, size))
            jobs = [(p, size) for p, _ in samples]
            # threads, not processes: Pillow releases the GIL while decoding and resizing, and a
            # forked pool can deadlock once torch's threads exist
            with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
                it = pool.map(_load, jobs)
                if progress:
                    from tqdm import tqdm
                    it = tqdm(it, total=len(jobs), desc=f"decode {split} {size}px", unit="img", leave=False)
                for i, arr in enumerate(it):
                    images[i] = arr
            images.flush()
            del images
            np.save(tmp / "labels.npy", np.array([l for _, l in samples], dtype=np.int64))
            (tmp / "meta.json").write_text(json.dumps({"root": str(root), "split": split, "size": size,
                                                       "classes": classes, "n": len(samples)}))
            try:
                os.replace(tmp, final)
            except OSError:   # another process finished the same cache first: use theirs
                if not (final / "images.npy").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Split(np.load(final / "images.npy", mmap_mode="r"), np.load(final / "labels.npy"),
                 tuple(classes), str(root), digest, _identity(root, samples, classes))


@dataclass(frozen=True)
class Stats:
    mean_image: np.ndarray   # (3, P, P) float32, 0..255: the per-pixel training mean (§2)
    eigval: np.ndarray       # (3,) eigenvalues of the RGB covariance, pixels in 0..1 (fb.resnet.torch units)
    eigvec: np.ndarray       # (3, 3) eigenvectors as columns; rows R, G, B


def train_stats(train: Split, chunk: int = 512) -> Stats:
    """Mean image and RGB covariance over every training pixel, streamed in chunks (float64)."""
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
