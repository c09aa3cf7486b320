"""Learning-rate schedules (§5) and the optimiser.

paper:   divide lr by 10 when the validation top-1 error stops improving, at most three times;
         patience = 10 epochs at a 90-epoch budget, scaled to the run's budget (RunConfig.patience).
plateau: the seed's torch.optim.lr_scheduler.ReduceLROnPlateau with default arguments
         (factor 0.1, patience 10, threshold 1e-4 rel), stepped on validation top-5 error.
"""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

MAX_DROPS = 3   # §5: "reduced three times prior to termination"


def build_optimizer(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    # §5; PyTorch's SGD applies decay as lr * wd * w inside the momentum buffer, like the paper's rule
    # when the lr is constant.
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


class Schedule:
    """Steps an lr scheduler once per epoch on the metric its toggle names."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, lr: float, patience: int):
        if kind == "paper":
            # min_lr caps the drops at three: after lr/1000 a further drop changes nothing.
            self.scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=patience,
                                               min_lr=lr * 0.1 ** MAX_DROPS)
            self.metric = "val_top1_err"
        elif kind == "plateau":
            self.scheduler = ReduceLROnPlateau(optimizer)
            self.metric = "val_top5_err"
        else:
            raise ValueError(f"unknown lr_schedule {kind!r}; choices: paper, plateau")
        self.optimizer = optimizer

    def step(self, metrics: dict[str, float]) -> None:
        self.scheduler.step(metrics[self.metric])

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
