"""AlexNet (paper §3) with every architectural deviation as a toggle, plus a width multiplier and
a resolution-adapted stem for reduced profiles.

Shapes at the paper's size (224 px, width 1, stem 11/4/2):
    conv1 96@55x55 -> LRN -> pool 27x27 -> conv2 256@27 -> LRN -> pool 13 -> conv3 384@13
    -> conv4 384@13 -> conv5 256@13 -> pool 6 -> fc6 4096 -> fc7 4096 -> fc8 classes
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from . import distributed
from .lrn import LRN
from .toggles import Toggles

CONV_CHANNELS = (96, 256, 384, 384, 256)   # §3.5
FC_UNITS = 4096                             # §3.5
GROUPED = (False, True, False, True, True)  # conv2, conv4, conv5 see only their tower (§3.2)
PAPER_STEM = (11, 4, 2)                     # kernel, stride, padding of conv1 at 224 px
INIT_STD = 0.01                             # §5
# LRN alpha in the paper's units. The seed wrote nn.LocalResponseNorm(alpha=10e-4), which divides
# by size=5: 2e-4 in the paper's units, twice the paper's strength.
LRN_ALPHA = {"paper": 1e-4, "seed": 2e-4}


@dataclass(frozen=True)
class Arch:
    """What the network builder needs: the profile's geometry and the run's toggles. The model
    toggles (registry entries that touch "model") are read here and nowhere else."""
    num_classes: int = 1000
    image_size: int = 224
    width: float = 1.0
    stem: tuple[int, int, int] = PAPER_STEM
    toggles: Toggles = Toggles()

    def channels(self) -> tuple[int, ...]:
        # round to a multiple of 2 so two towers always split evenly
        return tuple(max(2, 2 * round(c * self.width / 2)) for c in CONV_CHANNELS)

    def fc_units(self) -> int:
        return max(2, 2 * round(FC_UNITS * self.width / 2))

    def feature_sizes(self) -> list[int]:
        """Spatial size after conv1, pool1, pool2 and pool3."""
        k, s, p = self.stem
        z = 3 if self.toggles.overlap_pool else 2
        pool = lambda n: (n - z) // 2 + 1
        c1 = (self.image_size + 2 * p - k) // s + 1
        p1 = pool(c1)
        p2 = pool(p1)
        return [c1, p1, p2, pool(p2)]


def check_geometry(arch: Arch) -> None:
    sizes = arch.feature_sizes()
    if sizes[2] < 3:
        raise ValueError(f"image_size {arch.image_size} with stem {arch.stem} leaves {sizes[2]}x{sizes[2]} maps "
                         f"before the last pooling (need at least 3x3): use a larger image or a smaller stem stride")


class Dropout(nn.Module):
    """Dropout (§4.2): each unit kept with probability 1 - p, the kept ones scaled by 1 / (1 - p),
    as nn.Dropout. Where 1 - p is a whole number of 256ths (the paper's 0.5), the keep mask is
    random bytes below that threshold, the same Bernoulli draw at a third of bernoulli_'s cost on
    the CPU; other p use bernoulli_. Under torchrun each rank draws the mask of the whole batch
    from the same stream and keeps its own rows, so K processes drop what one process drops
    (core/distributed.py)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        offset, total = distributed.shard() or (0, x.shape[0])
        keep = keep_mask((total, *x.shape[1:]), 1 - self.p, x)
        return x * keep[offset:offset + x.shape[0]]

    def extra_repr(self) -> str:
        return f"p={self.p}"


def keep_mask(shape: tuple[int, ...], q: float, like: torch.Tensor) -> torch.Tensor:
    """1 / q with probability q, else 0, in like's dtype and device."""
    threshold = q * 256
    if threshold == int(threshold):
        bytes_ = torch.randint(0, 256, shape, dtype=torch.uint8, device=like.device)
        return (bytes_ < int(threshold)).to(like.dtype).div_(q)
    return like.new_empty(shape).bernoulli_(q).div_(q)


class AlexNet(nn.Module):
    def __init__(self, arch: Arch):
        super().__init__()
        check_geometry(arch)
        self.arch = arch
        c1, c2, c3, c4, c5 = arch.channels()
        k, s, p = arch.stem
        t = arch.toggles
        g = t.groups
        z = 3 if t.overlap_pool else 2
        norm = (lambda: LRN(5, LRN_ALPHA[t.lrn_alpha], 0.75, 2.0)) if t.lrn else nn.Identity
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, k, s, p), nn.ReLU(inplace=True), norm(), nn.MaxPool2d(z, 2),
            nn.Conv2d(c1, c2, 5, 1, 2, groups=g), nn.ReLU(inplace=True), norm(), nn.MaxPool2d(z, 2),
            nn.Conv2d(c2, c3, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, 1, 1, groups=g), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, 1, 1, groups=g), nn.ReLU(inplace=True), nn.MaxPool2d(z, 2),
        )
        final = arch.feature_sizes()[3]
        fc = arch.fc_units()
        if t.dropout == "paper":   # §4.2: outputs of fc6 and fc7
            head = [nn.Linear(c5 * final * final, fc), nn.ReLU(inplace=True), Dropout(0.5),
                    nn.Linear(fc, fc), nn.ReLU(inplace=True), Dropout(0.5), nn.Linear(fc, arch.num_classes)]
        else:                         # seed / torchvision: inputs of fc6 and fc7
            head = [Dropout(0.5), nn.Linear(c5 * final * final, fc), nn.ReLU(inplace=True),
                    Dropout(0.5), nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Linear(fc, arch.num_classes)]
        if t.final_relu:           # the seed's ReLU on the logits
            head.append(nn.ReLU())
        self.classifier = nn.Sequential(*head)

    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def fcs(self) -> list[nn.Linear]:
        return [m for m in self.classifier if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (N, 3, S, S) -> logits (N, classes)
        return self.classifier(torch.flatten(self.features(x), 1))


def fan_ins(arch: Arch) -> list[int]:
    """Fan-in of conv1..conv5, fc6..fc8 (inputs seen by one output unit)."""
    c1, c2, c3, c4, c5 = arch.channels()
    k, g, final = arch.stem[0], arch.toggles.groups, arch.feature_sizes()[3]
    fc = arch.fc_units()
    return [3 * k * k, c1 // g * 25, c2 * 9, c3 // g * 9, c4 // g * 9, c5 * final * final, fc, fc]


def paper_stds(arch: Arch, literal: bool = False) -> list[float]:
    """The paper-init std per layer: 0.01 scaled by sqrt(full-size fan-in / fan-in), where the
    full-size net is the same architecture at 224 px, width 1 and the paper's stem, so each layer's
    output variance matches it (exactly 0.01 at full size). literal=True: 0.01 everywhere."""
    if literal:
        return [INIT_STD] * 8
    full = replace(arch, image_size=224, width=1.0, stem=PAPER_STEM)
    return [INIT_STD * math.sqrt(f / a) for f, a in zip(fan_ins(full), fan_ins(arch))]


def init_weights(model: AlexNet) -> None:
    """§5, toggles `init` and `output_bias`: weights N(0, s); biases 1 in conv2, conv4, conv5 and
    the hidden fc layers, 0 elsewhere (the output layer's bias: 0 in the paper, 1 in the seed's
    variant). init: "paper" (scaled s), "paper_literal" (s = 0.01), "pytorch" (PyTorch's default;
    untouched)."""
    mode = model.arch.toggles.init
    output_bias = 1.0 if model.arch.toggles.output_bias == "seed" else 0.0
    if mode == "pytorch":
        return
    if mode not in ("paper", "paper_literal"):
        raise ValueError(f"unknown init {mode!r}; choices: paper, paper_literal, pytorch")
    layers = model.convs() + model.fcs()
    ones = {1, 3, 4, 5, 6}   # conv2, conv4, conv5, fc6, fc7 (indices over convs then fcs)
    with torch.no_grad():
        for i, (layer, std) in enumerate(zip(layers, paper_stds(model.arch, mode == "paper_literal"))):
            layer.weight.normal_(0.0, std)
            layer.bias.fill_(1.0 if i in ones else 0.0)
        layers[-1].bias.fill_(output_bias)
