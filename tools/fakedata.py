"""A synthetic ImageFolder on disk, for measurements where no real dataset is at hand (a GPU
machine, the streaming benchmark): `<out>/{train,val}/<class>/*.JPEG` with ImageNet-like sizes
(sides drawn around 500 x 375) or a fixed size, each class its own colour plus noise, so a
network has something to learn. Never committed.

    python -m tools.fakedata /tmp/fake --classes 10 --train 950 --val 390 --size 160
    python -m tools.fakedata /tmp/fake-imagenet --classes 1000 --train 20 --val 2      # 22,000 JPEGs
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, cls: int, seed: int, size: int | None) -> None:
    rng = np.random.default_rng(seed)
    w, h = (size, size) if size else (int(rng.integers(300, 640)), int(rng.integers(250, 500)))
    base = np.array([(cls * 37) % 256, (cls * 91) % 256, (cls * 53) % 256])
    blocks = rng.integers(-50, 51, (h // 16 + 1, w // 16 + 1, 3))
    img = base + np.kron(blocks, np.ones((16, 16, 1), dtype=np.int64))[:h, :w]
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)


def write(out: Path, classes: int, train: int, val: int, size: int | None = None, workers: int | None = None) -> int:
    jobs = []
    for split, per_class in (("train", train), ("val", val)):
        for c in range(classes):
            folder = out / split / f"c{c:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs += [(folder / f"{split}-{c}-{i}.JPEG", c, (split == "val") * 10 ** 9 + c * 10 ** 5 + i, size) for i in range(per_class)]
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        list(pool.map(lambda job: write_image(*job), jobs))
    return len(jobs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train", type=int, default=100, help="training images per class")
    ap.add_argument("--val", type=int, default=10, help="validation images per class")
    ap.add_argument("--size", type=int, help="square side in pixels (default: ImageNet-like sizes)")
    a = ap.parse_args(argv)
    if a.out.exists() and any(a.out.iterdir()):
        print(f"error: {a.out} is not empty; give a new folder", file=sys.stderr)
        return 2
    n = write(a.out, a.classes, a.train, a.val, a.size)
    print(f"{n} JPEGs in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
