"""Batched input pipeline: lighting, input scaling, crops and flips on whole batches (§2, §4.1).

Every random draw of an epoch comes from one generator seeded by (seed, epoch) and is drawn in
full whatever the toggles, so seed k gives every variant the same order, crops, flips and
lighting alphas (paired comparisons). On the CPU the paper crop with its lighting and scaling runs
as one C loop (core/augment.c, the same floats as the torch ops, which every other case uses).
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from . import native
from .data import Stats
from .toggles import Toggles

IMAGENET_MEAN = (0.485, 0.456, 0.406)   # for input_scale=unit_std (torchvision's constants)
IMAGENET_STD = (0.229, 0.224, 0.225)
PCA_ALPHA_STD = 0.1                     # §4.1
RRC_SCALE, RRC_RATIO, RRC_TRIES = (0.08, 1.0), (3 / 4, 4 / 3), 10
_PTR, _I64 = ctypes.c_void_p, ctypes.c_int64
_LIB = native.Library("augment.c", {"crop_normalise": ([_PTR] * 8 + [_I64] * 4 + [ctypes.c_int], None)},
                      "Augmentation")


@dataclass(frozen=True)
class EpochDraws:
    """All random choices of one training epoch, indexed by position in the epoch."""
    order: torch.Tensor     # (N,) permutation of the training set
    offsets: torch.Tensor   # (N, 2) top-left corner of the paper crop
    flips: torch.Tensor     # (N,) bool
    alphas: torch.Tensor    # (N, 3) lighting coefficients ~ N(0, 0.1)
    rrc: torch.Tensor       # (N, RRC_TRIES, 4) uniforms for RandomResizedCrop
    fancy: torch.Tensor     # (N,) bool: the seed's FancyPCA applied (p=0.5); its alpha is alphas[:, 0]

    def to(self, device) -> "EpochDraws":
        """All draws on `device`: one copy per epoch instead of small synchronising copies per batch."""
        return EpochDraws(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 12345) % (2 ** 63)


def draw_epoch(n: int, prep: int, crop: int, seed: int, epoch: int) -> EpochDraws:
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return EpochDraws(
        order=torch.randperm(n, generator=g),
        offsets=torch.randint(0, prep - crop + 1, (n, 2), generator=g),
        flips=torch.rand(n, generator=g) < 0.5,
        alphas=torch.randn(n, 3, generator=g) * PCA_ALPHA_STD,
        rrc=torch.rand(n, RRC_TRIES, 4, generator=g),
        fancy=torch.rand(n, generator=g) < 0.5,
    )


CENTRE_VIEW = 4   # in eval_views(ten_crop=True): the unflipped centre crop


class Pipeline:
    """Turns uint8 (B, 3, P, P) batches into normalised float (B, 3, S, S) network inputs, on
    whatever device the batch and the pipeline live on (`to(device)`)."""

    def __init__(self, stats: Stats, crop_size: int, toggles: Toggles):
        # the data toggles (registry entries that touch "data") are read here and nowhere else
        self.crop_size, self.pca, self.crop, self.input_scale = crop_size, toggles.pca, toggles.crop, toggles.input_scale
        self.mean_image = torch.from_numpy(stats.mean_image)                    # (3, P, P), 0..255
        # lighting direction per unit alpha: eigvec @ diag(eigval), in 0..255 units
        self.lighting = torch.from_numpy(stats.eigvec * stats.eigval[None, :] * 255.0).float()  # (3, 3)
        self.unit_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
        self.unit_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
        self.device = torch.device("cpu")

    def to(self, device) -> "Pipeline":
        self.device = torch.device(device)
        for name in ("mean_image", "lighting", "unit_mean", "unit_std"):
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    # -- pieces --------------------------------------------------------------------------------
    def normalise(self, x: torch.Tensor, mean_image: torch.Tensor | None = None, inplace: bool = False) -> torch.Tensor:
        """x: float (B, 3, H, W) in 0..255 -> network scale (input_scale toggle, §2). mean_image:
        the training mean at the same pixels as x (default: the whole P x P mean image). inplace:
        overwrite x (the same values)."""
        if self.input_scale == "paper":   # raw 0..255 minus the training mean image
            mean = self.mean_image if mean_image is None else mean_image
            return x.sub_(mean) if inplace else x - mean
        return x.sub_(self.unit_mean).div_(self.unit_std) if inplace else (x - self.unit_mean) / self.unit_std

    def lighting_shift(self, alphas: torch.Tensor) -> torch.Tensor:
        """§4.1: one RGB shift per image, eigvec @ (alpha * eigval): (B, 3) in 0..255 units."""
        return alphas @ self.lighting.T

    @staticmethod
    def fancy_pca(x: torch.Tensor, apply: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The seed's lighting: albumentations 1.3.0 (the version it pinned) FancyPCA(alpha=0.1,
        p=0.5), batched. Per image: PCA of its own RGB pixels (0..1), one scalar alpha ~ N(0, 0.1),
        shift = eigvec @ (alpha * eigval) * 255 added to every pixel, clipped to 0..255 and
        truncated to integers (its astype(uint8)). albumentations 2.x replaced this with a
        different, per-pixel transform, so the 1.3.0 formula is written out here.
        x: float (B, 3, H, W) holding 0..255 integers; apply (B,) bool; alpha (B,)."""
        px = x.flatten(2).double() / 255.0                                   # (B, 3, HW)
        centred = px - px.mean(-1, keepdim=True)
        cov = centred @ centred.transpose(1, 2) / (px.shape[-1] - 1)         # np.cov: (B, 3, 3)
        eigval, eigvec = torch.linalg.eigh(cov)                              # ascending
        shift = (eigvec @ (alpha.double()[:, None] * eigval)[..., None])[..., 0] * 255.0   # (B, 3)
        shifted = (x.double() + shift[:, :, None, None]).clamp(0, 255).floor().to(x.dtype)
        return torch.where(apply[:, None, None, None], shifted, x)

    def random_resized(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """torchvision's RandomResizedCrop sampling (scale 0.08-1, ratio 3/4-4/3), from drawn uniforms."""
        b, _, h, w = x.shape
        s = self.crop_size
        out = torch.empty(b, x.shape[1], s, s, device=x.device)
        log_r = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
        u = u.tolist()   # one read of the uniforms (from the GPU: one sync per batch, not per number)
        for i in range(b):
            box = (0, 0, h, w)   # fallback: the whole image
            for t in range(RRC_TRIES):
                area = h * w * (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u[i][t][0])
                ratio = math.exp(log_r[0] + (log_r[1] - log_r[0]) * u[i][t][1])
                cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
                if 0 < cw <= w and 0 < ch <= h:
                    top = int(u[i][t][2] * (h - ch + 1))
                    left = int(u[i][t][3] * (w - cw + 1))
                    box = (top, left, ch, cw)
                    break
            top, left, ch, cw = box
            out[i] = F.interpolate(x[i:i + 1, :, top:top + ch, left:left + cw], size=(s, s),
                                   mode="bilinear", align_corners=False, antialias=True)[0]
        return out

    # -- whole batches -------------------------------------------------------------------------
    def _as_tensor(self, images) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        return images.to(self.device, non_blocking=True)

    def train_batch(self, images, draws: EpochDraws, start: int) -> torch.Tensor:
        """images: uint8 (B, 3, P, P) (numpy or tensor) at epoch positions start..start+B-1
        -> float (B, 3, S, S) on the pipeline's device. Order: crop and flip (the training mean
        image goes through the same crop), lighting on the crop, then input scaling."""
        b = len(images)
        sl = slice(start, start + b)
        x = self._as_tensor(images)
        flips = draws.flips[sl].to(self.device)
        alphas = draws.alphas[sl].to(self.device)
        if self.crop == "paper" and self.pca != "fancy_pca":
            # everything after the paper's crop is per pixel: done on the whole image, the crop last,
            # the same values with one gather of the result instead of gathers of image and mean image
            offsets = draws.offsets[sl].to(self.device)
            shift = self.lighting_shift(alphas) if self.pca == "paper" else None
            fused = self.crop_normalise(x, offsets, flips, shift)
            if fused is not None:
                return fused
            x = x.float()
            if shift is not None:
                x.add_(shift[:, :, None, None])
            return crop_flip(self.normalise(x, inplace=True), offsets, flips, self.crop_size)
        mean = self.mean_image.expand(b, -1, -1, -1)
        if self.crop == "paper":
            offsets = draws.offsets[sl].to(self.device)
            x = crop_flip(x, offsets, flips, self.crop_size).float()
            mean = crop_flip(mean, offsets, flips, self.crop_size)
        else:   # image and mean image resized together, one interpolation per sample
            both = self.random_resized(torch.cat([x.float(), mean], 1), draws.rrc[sl])
            both = torch.where(flips[:, None, None, None], both.flip(-1), both)
            x, mean = both[:, :3], both[:, 3:]
        if self.pca == "paper":
            x = x + self.lighting_shift(alphas)[:, :, None, None]
        elif self.pca == "fancy_pca":
            x = self.fancy_pca(x, draws.fancy[sl].to(self.device), alphas[:, 0])
        return self.normalise(x, mean)

    def crop_normalise(self, x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
                       shift: torch.Tensor | None) -> torch.Tensor | None:
        """The paper crop of uint8 x with its mirror, lighting shift and input scaling in one C loop
        (core/augment.c): channels_last float, the same values as the torch ops. None where it does
        not apply (not on the CPU, or not built)."""
        if x.device.type != "cpu" or x.dtype != torch.uint8 or (lib := _LIB.get()) is None:
            return None
        b, c, p, _ = x.shape
        s = self.crop_size
        x, offsets, flips = x.contiguous(), offsets.to(torch.int64).contiguous(), flips.to(torch.uint8).contiguous()
        paper = self.input_scale == "paper"
        mean = self.mean_image.float().contiguous() if paper else None
        unit = (self.unit_mean.flatten().contiguous(), self.unit_std.flatten().contiguous())
        shift = None if shift is None else shift.float().contiguous()
        out = torch.empty((b, c, s, s), memory_format=torch.channels_last)
        ptr = lambda t: None if t is None else t.data_ptr()
        lib.crop_normalise(ptr(x), ptr(offsets), ptr(flips), ptr(shift), ptr(mean), ptr(unit[0]), ptr(unit[1]),
                           ptr(out), b, c, p, s, torch.get_num_threads())
        return out

    def eval_views(self, images, ten_crop: bool) -> list[torch.Tensor]:
        """Centre crop (1 view) or the paper's 10 views (four corners, centre, and their flips;
        §4.1): a list of float (B, 3, S, S) tensors."""
        x = self._as_tensor(images)
        b, p, s = x.shape[0], x.shape[-1], self.crop_size
        c = (p - s) // 2
        corners = [(c, c)] if not ten_crop else [(0, 0), (0, p - s), (p - s, 0), (p - s, p - s), (c, c)]
        views = []
        for flip in ([False] if not ten_crop else [False, True]):
            flips = torch.full((b,), flip, device=self.device)
            for y, z in corners:   # filled on the device: no host-to-device copy
                offsets = torch.stack([torch.full((b,), v, device=self.device) for v in (y, z)], 1)
                view = self.crop_normalise(x, offsets, flips, None)
                if view is None:
                    mean = crop_flip(self.mean_image.expand(b, -1, -1, -1), offsets, flips, s)
                    view = self.normalise(crop_flip(x, offsets, flips, s).float(), mean)
                views.append(view)
        return views


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """x: (B, C, P, P) -> (B, C, size, size), cropped at offsets (B, 2) = (top, left) and mirrored
    left-right where flips (B,) is true; one torch.gather over the flattened pixels for the whole
    batch (cheaper on the CPU than advanced indexing). x may be an expanded view (the mean image)."""
    b, c, p = x.shape[0], x.shape[1], x.shape[-1]
    ar = torch.arange(size, device=x.device)
    rows = offsets[:, :1] + ar                                                  # (B, S)
    cols = offsets[:, 1:] + torch.where(flips[:, None], size - 1 - ar, ar)     # (B, S)
    flat = (rows[:, :, None] * p + cols[:, None, :]).view(b, 1, size * size).expand(b, c, size * size)
    return torch.gather(x.flatten(2), 2, flat).view(b, c, size, size)
