"""Learning-rate schedules and the optimiser (§5).

paper:   divide lr by 10 when the validation top-1 error stops improving, at most three times.
plateau: the seed's torch.optim.lr_scheduler.ReduceLROnPlateau (factor 0.1, threshold 1e-4 rel),
         stepped on validation top-5 error.
Both count patience in epochs: 10 epochs at the paper's 90, times the profile's epoch_scale
(RunConfig.patience), never changed by the `epochs` toggle, so `epochs=seed` changes only the
number of epochs. ReduceLROnPlateau's cooldown is 0 epochs, which scales to 0.

Optimiser (toggles `momentum`, `bias_decay`):
paper:   v <- 0.9 v - 0.0005 lr w - lr dL/dw;  w <- w + v   (the lr inside the velocity)
pytorch: torch.optim.SGD: b <- 0.9 b + dL/dw + 0.0005 w;  w <- w - lr b   (the lr outside)
At a constant lr the two are the same update (v = -lr b); after an lr drop the paper's velocity
keeps the steps already taken at the old lr, PyTorch's is rescaled at once by the new lr.
Weight decay on the weights only (paper) or on every parameter, biases included (seed).
"""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from .toggles import Toggles

MAX_DROPS = 3   # §5: "reduced three times prior to termination"


class PaperSGD(torch.optim.Optimizer):
    """SGD with momentum as §5 writes it: the learning rate and the decay inside the velocity."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            grads = [p.grad for p in params]
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)       # dL/dw + wd w
            velocity = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                velocity.append(state["velocity"])
            torch._foreach_mul_(velocity, m)
            torch._foreach_add_(velocity, grads, alpha=-lr)                # v <- m v - lr (dL/dw + wd w)
            torch._foreach_add_(params, velocity)                          # w <- w + v
        return None


def param_groups(model: torch.nn.Module, weight_decay: float, bias_decay: bool) -> list[dict]:
    """Decay on the weights (tensors of 2+ dimensions) only, or on every parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    if bias_decay:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, lr: float, momentum: float, weight_decay: float,
                    toggles: Toggles = Toggles()) -> torch.optim.Optimizer:
    """The optimizer toggles (registry entries that touch "optimizer") are read here only."""
    update = toggles.momentum
    groups = param_groups(model, weight_decay, toggles.bias_decay)
    if update == "paper":
        return PaperSGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if update == "pytorch":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown momentum update {update!r}; choices: paper, pytorch")


class Schedule:
    """Steps an lr scheduler once per epoch on the metric its toggle names."""

    def __init__(self, optimizer: torch.optim.Optimizer, toggles: Toggles, lr: float, patience: int):
        kind = toggles.lr_schedule
        if kind == "paper":
            # min_lr caps the drops at three: after lr/1000 a further drop changes nothing.
            self.scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=patience,
                                               min_lr=lr * 0.1 ** MAX_DROPS)
            self.metric = "val_top1_err"
        elif kind == "plateau":
            self.scheduler = ReduceLROnPlateau(optimizer, patience=patience, cooldown=0)
            self.metric = "val_top5_err"
        else:
            raise ValueError(f"unknown lr_schedule {kind!r}; choices: paper, plateau")
        self.optimizer = optimizer

    def step(self, metrics: dict[str, float]) -> None:
        self.scheduler.step(metrics[self.metric])

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
