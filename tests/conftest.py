"""Shared fixtures: a tiny ImageFolder dataset on disk and the decoded Data built from it.

Everything here is small on purpose: the whole suite must stay fast on a 2-core machine that is
busy training in the background.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

torch.set_num_threads(1)

CLASSES = ("apple", "bird", "car")
TRAIN_PER_CLASS = 6
VAL_PER_CLASS = 3
SIZES = ((40, 50), (50, 40), (45, 45), (64, 40), (40, 72), (52, 60))   # (width, height)
CROP = 32          # training crop of the tiny profile
PREP = 37          # round(256 * 32 / 224): the "256-equivalent" side


def _random_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Random colours: a per-image base colour plus blocky noise, so every image differs and the
    RGB covariance is not degenerate. (H, W, 3) uint8."""
    base = rng.integers(40, 216, size=3)
    blocks = rng.integers(-40, 41, size=(height // 5 + 1, width // 5 + 1, 3))
    noise = np.kron(blocks, np.ones((5, 5, 1), dtype=np.int64))[:height, :width]
    return np.clip(base + noise + rng.integers(-10, 11, size=(height, width, 3)), 0, 255).astype(np.uint8)


def write_imagefolder(root: Path, seed: int = 0) -> Path:
    """<root>/{train,val}/<class>/*.JPEG with varied, non-square sizes, one grayscale ("L") JPEG
    and one PNG. Returns root."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = SIZES[(i + c) % len(SIZES)]
                img = Image.fromarray(_random_image(rng, w, h), "RGB")
                if split == "train" and c == 0 and i == 1:
                    img.convert("L").save(folder / f"img{i}.JPEG", quality=95)   # grayscale JPEG
                elif split == "train" and c == 1 and i == 2:
                    img.save(folder / f"img{i}.png")                             # a PNG
                else:
                    img.save(folder / f"img{i}.JPEG", quality=95)
    return root


@pytest.fixture
def tiny_imagefolder(tmp_path) -> Path:
    """A fresh tiny ImageFolder root (3 classes, 6 train and 3 val images per class)."""
    return write_imagefolder(tmp_path / "imagefolder")


def load_tiny_data(root: Path, cache: Path):
    from core.data import load_split, train_stats
    from core.engine import Data
    train = load_split(root, "train", PREP, cache=str(cache), workers=1, progress=False)
    val = load_split(root, "val", PREP, classes=train.classes, cache=str(cache), workers=1, progress=False)
    return Data(train, val, train_stats(train))


@pytest.fixture
def tiny_data(tiny_imagefolder, tmp_path):
    """core.engine.Data (train, val, stats) of tiny_imagefolder at prep size 37 (crop 32)."""
    return load_tiny_data(tiny_imagefolder, tmp_path / "cache")


@pytest.fixture(scope="session")
def shared_tiny_data(tmp_path_factory):
    """The same data, decoded once per session, for tests that only read it."""
    base = tmp_path_factory.mktemp("shared")
    return load_tiny_data(write_imagefolder(base / "imagefolder"), base / "cache")


def tiny_profile(**overrides):
    """A profile small enough for CPU tests: 32 px crops, width 1/8, stem 5/2/1."""
    from core.config import Profile
    kw = dict(name="tiny", dataset="imagenette", image_size=CROP, width=0.125, stem=(5, 2, 1),
              batch_size=8, epoch_scale=0.0223, channels_last=False, eval_batch_size=64)
    kw.update(overrides)
    return Profile(**kw)


class ViewLogits(torch.nn.Module):
    """A stand-in network for evaluate(): the k-th call returns table[k % V] (the logits of view k
    for the first B images), so a test controls every view's logits exactly. Needs one batch."""

    def __init__(self, table: torch.Tensor):   # (V, N, classes)
        super().__init__()
        self.table, self.calls = table, 0
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        out = self.table[self.calls % len(self.table), :x.shape[0]]
        self.calls += 1
        return out


def tta_table(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """(10, N, classes) view logits where averaging softmax outputs and averaging logits disagree:
    'A' images: softmax mean right, logit mean wrong (one view shouts for another class);
    'B' images: logit mean right, softmax mean wrong; 'C': every view agrees on the label."""
    kinds = "AAAABBCCC" * (len(labels) // 9 + 1)
    table = torch.zeros(10, len(labels), num_classes)
    for n, (y, kind) in enumerate(zip(labels, kinds)):
        other = (int(y) + 1) % num_classes
        if kind == "A":
            table[:, n, y] = 3.0
            table[7, n] = 0.0
            table[7, n, other] = 40.0
        elif kind == "B":
            table[:, n, other] = 1.0
            table[2, n] = 0.0
            table[2, n, y] = 30.0
        else:
            table[:, n, y] = 2.0
    return table


SHARED = REPO.parent / "shared" / "datasets" / "imagenette2-224"


def cli(*args, cwd=REPO, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory):
    """The smoke deviations grid with 2 seeds on the shared Imagenette, run once per session into a
    fresh SQLite store; returns (uri, tmp folder, the runner's stderr)."""
    tmp = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{tmp}/mlflow.db"
    res = cli("run_ablation.py", "--grid", "deviations", "--profile", "smoke", "--seeds", "2",
              "--tracking-uri", uri, "--cache-dir", str(tmp / "cache"), "--data-root", str(SHARED))
    assert res.returncode == 0, res.stderr[-3000:]
    return uri, tmp, res.stderr


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL server on 127.0.0.1 and a free port, in a temporary data folder, run as an
    unprivileged user (PostgreSQL refuses root); yields new_database() -> a fresh database's URL."""
    import itertools
    import os
    import shutil
    import psycopg
    for tool in ("initdb", "pg_ctl"):
        assert shutil.which(tool), f"PostgreSQL's {tool} is needed on PATH (PostgreSQL 15)"
    base = tmp_path_factory.mktemp("postgres")
    as_user = []
    if os.geteuid() == 0:   # hand the folder to an unprivileged user and run the server as it
        os.chmod(base, 0o777)
        as_user = ["runuser", "-u", "nobody", "--"]
        for parent in base.parents:   # let that user reach the folder
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
    data, port = base / "data", free_port()
    subprocess.run([*as_user, "initdb", "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True, timeout=300)
    subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "120", "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"],
                   check=True, capture_output=True, timeout=180)
    counter = itertools.count()

    def new_database() -> str:
        name = f"queue{next(counter)}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=120)


@contextlib.contextmanager
def mlflow_server(*store_args: str):
    """A real `mlflow server` on 127.0.0.1 and a free port with the given store arguments; yields
    its URL; stops the server and its workers (its process group) at the end."""
    import os
    import signal
    import time
    import urllib.request
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", *store_args, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(180):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow server did not answer /health within 180 s")
        yield f"http://127.0.0.1:{port}"
    finally:   # SIGTERM to the group, SIGKILL if it lingers
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
