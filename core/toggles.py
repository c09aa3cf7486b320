"""The deviation registry: every way the seed (or a common reproduction) departs from the paper.

Each toggle is one entry: its paper value (the default), the deviating value(s), the paper
section it cites and a one-line description. The model, data and schedule builders look
toggles up by name; tests parametrise over this registry; MLflow logs each under its name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Toggle:
    name: str
    paper: Any               # the paper's choice; the default of every config
    deviations: tuple        # the other accepted values (the first is the seed's / common one)
    cite: str                # paper section
    what: str                # what the toggle changes, in one line
    touches: str             # "model" | "data" | "schedule" | "optimizer" | "eval": where a flip must show

    @property
    def choices(self) -> tuple:
        return (self.paper, *self.deviations)

    @property
    def deviation(self) -> Any:
        return self.deviations[0]


REGISTRY: dict[str, Toggle] = {t.name: t for t in (
    # --- the seed's named deviations and the paper's own ablations ---
    Toggle("init", "paper", ("pytorch", "paper_literal"), "§5",
           "weights N(0, s) with biases 1 in conv2/4/5 and hidden fc, s=0.01 scaled by fan-in "
           "to the full-size net | PyTorch default init (seed) | s=0.01 whatever the size", "model"),
    Toggle("pca", "paper", ("fancy_pca", "none"), "§4.1",
           "dataset-wide PCA lighting | FancyPCA as albumentations 1.3.0 (the seed's pin) computed it: per-image PCA, p=0.5 | none", "data"),
    Toggle("lr_schedule", "paper", ("plateau",), "§5",
           "divide lr by 10 when val error stops improving, at most 3 times | "
           "ReduceLROnPlateau defaults on val top-5 error (seed)", "schedule"),
    Toggle("epochs", "paper", ("seed",), "§5", "90 epochs | 120 epochs (seed), times the profile's epoch scale", "schedule"),
    Toggle("lrn", True, (False,), "§3.3", "local response normalisation after ReLU1 and ReLU2 | none", "model"),
    Toggle("overlap_pool", True, (False,), "§3.4", "max pool z=3, s=2 | z=2, s=2", "model"),
    # --- the seed's hidden deviations and the input scale ---
    Toggle("crop", "paper", ("random_resized",), "§4.1",
           "random crop of the profile size from the 256-equivalent image | "
           "RandomResizedCrop scale 0.08-1, ratio 3/4-4/3 (seed)", "data"),
    Toggle("final_relu", False, (True,), "§3.5", "logits feed the softmax | ReLU on the logits (seed)", "model"),
    Toggle("lrn_alpha", "paper", ("seed",), "§3.3", "alpha 1e-4 in the paper's formula | 2e-4 (the seed's nn.LocalResponseNorm(alpha=10e-4), twice as strong)", "model"),
    Toggle("dropout", "paper", ("seed",), "§4.2", "dropout on the outputs of fc6 and fc7 | on the inputs of fc6 and fc7 (seed)", "model"),
    Toggle("output_bias", "paper", ("seed",), "§5", "output-layer bias 0 | 1 (seed's paper-init variant; needs init paper*)", "model"),
    Toggle("groups", 2, (1,), "§3.2", "two towers: conv2/4/5 see their own half | one tower (seed)", "model"),
    Toggle("tta_average", "softmax", ("logits",), "§4.1", "10-crop averages softmax outputs | averages logits (seed)", "eval"),
    Toggle("input_scale", "paper", ("unit_std",), "§2",
           "training-set mean subtracted from raw 0..255 | /255, ImageNet mean/std (modern pipelines)", "data"),
    # --- the optimiser as every PyTorch reproduction writes it ---
    Toggle("momentum", "paper", ("pytorch",), "§5",
           "v <- 0.9 v - 0.0005 lr w - lr dL/dw, w <- w + v: the lr inside the velocity, so an lr drop does not "
           "rescale the velocity already built up | torch.optim.SGD: lr applied outside the velocity (seed)",
           "optimizer"),
    Toggle("bias_decay", False, (True,), "§5",
           "weight decay on the weights only (the paper's rule is written for weights; cuda-convnet's layer "
           "definitions decay weights, not biases) | weight decay on every parameter, biases too (seed)",
           "optimizer"),
)}

# The toggles of the seed's own text and the paper's ablations: the `deviations` and `factorial` grids.
NAMED = ("init", "pca", "lr_schedule", "epochs", "lrn", "overlap_pool")

# A typed, immutable record of one value per toggle, defaulting to the paper.
Toggles = dataclasses.make_dataclass(
    "Toggles",
    [(t.name, type(t.paper), dataclasses.field(default=t.paper)) for t in REGISTRY.values()],
    frozen=True,
    namespace={"__doc__": "One value per registered toggle; every default is the paper's choice."},
)


class ToggleError(ConfigError):
    """An unknown toggle or value (a ConfigError: answered like any other bad input)."""


def make_toggles(overrides: dict | None = None, where: str = "") -> "Toggles":
    """Build a Toggles record, refusing unknown names and values with the valid choices."""
    overrides = dict(overrides or {})
    at = f" in {where}" if where else ""
    for name, value in overrides.items():
        if name not in REGISTRY:
            raise ToggleError(f"unknown toggle {name!r}{at}; valid toggles: {', '.join(REGISTRY)}")
        toggle = REGISTRY[name]
        # YAML gives bools and ints; refuse 1 for True and "2" for 2.
        if not any(value == c and type(value) is type(c) for c in toggle.choices):
            raise ToggleError(f"invalid value {value!r} for toggle {name!r}{at}; "
                              f"choices: {', '.join(repr(c) for c in toggle.choices)} (paper: {toggle.paper!r})")
    return Toggles(**overrides)


def as_dict(toggles: "Toggles") -> dict:
    return dataclasses.asdict(toggles)


def differences(toggles: "Toggles") -> dict:
    """The toggles that differ from the paper, in registry order."""
    return {k: v for k, v in as_dict(toggles).items() if v != REGISTRY[k].paper}
