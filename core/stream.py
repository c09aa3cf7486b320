"""Where training batches come from: the uint8 cache held in memory, or streamed from disk.

"memory": the cache is gathered from (on a GPU, copied to GPU memory first when it fits there);
on the CPU the memory-mapped file is read through the page cache. "stream", for a cache that does
not fit: each batch's rows are read from the cache file with positional reads, in the order of
the epoch's draws, on background threads a few batches ahead of the one being trained, into
pinned memory on a GPU machine so the copy to the device overlaps compute too. The rows are the
very bytes the in-memory path gathers, and crops, flips and lighting are drawn as always, so a run
gives the same result on either path. "auto" (the profiles' default) picks "memory" when the
training cache fits in half the GPU's free memory (on a GPU) or half the available RAM (on the
CPU), else "stream"; the choice is logged as the run's param `input`.
"""
from __future__ import annotations

import collections
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np
import torch

DEPTH = 3      # batches read ahead of the one being trained
THREADS = 16   # reader threads: positional reads release the GIL, and a disk serves many reads at once
CHUNK = 8      # rows one thread reads in a go; a batch's chunks are read in parallel


def resolve(choice: str, images, device: torch.device) -> str:
    """The input path for a training cache (`images`, (N, 3, P, P) uint8) on `device`."""
    if choice != "auto":
        return choice
    if not isinstance(images, np.memmap):   # already in memory (tests, synthetic data)
        return "memory"
    if device.type == "cuda":
        room = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil
        room = psutil.virtual_memory().available
    return "memory" if images.nbytes <= 0.5 * room else "stream"


class Reader:
    """Batches of rows of a uint8 .npy cache file, read ahead on threads (one per epoch)."""

    def __init__(self, images: np.memmap, pin: bool = False, depth: int = DEPTH, threads: int = THREADS,
                 chunk: int = CHUNK):
        if not isinstance(images, np.memmap):
            raise ValueError("stream input reads the cache file: give the memory-mapped cache")
        self.shape, self.offset = images.shape[1:], images.offset
        self.row = int(np.prod(self.shape))
        self.pin, self.depth, self.chunk = pin, depth, chunk
        self.fd = os.open(images.filename, os.O_RDONLY)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="stream")

    def _rows(self, buf: np.ndarray, idx: np.ndarray, slots: np.ndarray) -> None:
        for j in slots:
            got = os.preadv(self.fd, [buf[j]], self.offset + int(idx[j]) * self.row)
            if got != self.row:
                raise OSError(f"short read of row {idx[j]} from the image cache: the file is truncated; "
                              f"delete its cache folder and run again")

    def submit(self, idx: np.ndarray) -> tuple[torch.Tensor, list]:
        """Start reading rows `idx` into a (B, 3, P, P) uint8 tensor (pinned when asked): the rows in
        ascending file order, split into chunks read on the pool's threads at once. Returns the
        tensor and the chunks' futures; it is complete once they are."""
        out = torch.empty((len(idx), *self.shape), dtype=torch.uint8, pin_memory=self.pin)
        order = np.argsort(idx, kind="stable")
        buf = out.numpy()
        return out, [self.pool.submit(self._rows, buf, idx, order[i:i + self.chunk])
                     for i in range(0, len(order), self.chunk)]

    @staticmethod
    def _finish(out: torch.Tensor, parts: list) -> torch.Tensor:
        for f in parts:
            f.result()   # raises a chunk's error here
        return out

    def read(self, idx: np.ndarray) -> torch.Tensor:
        """Rows `idx`, in that order, as a (B, 3, P, P) uint8 tensor (pinned when asked)."""
        return self._finish(*self.submit(idx))

    def batches(self, indices: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        """One tensor per index array, `depth` batches read ahead."""
        it = iter(indices)
        pending = collections.deque(self.submit(idx) for idx in itertools.islice(it, self.depth))
        try:
            while pending:
                batch = self._finish(*pending.popleft())
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(self.submit(nxt))
                yield batch
        finally:
            for _, parts in pending:
                for f in parts:
                    f.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        os.close(self.fd)

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
