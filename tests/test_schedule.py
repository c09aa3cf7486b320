"""core/schedule.py and the epoch budget of core/config.py (§5)."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_profile
from core.config import RunConfig
from core.schedule import Schedule, build_optimizer
from core.toggles import make_toggles


def run(kind, curve, lr=0.01, patience=2, top5=None):
    """lr after each epoch's step on a scripted validation curve."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = Schedule(opt, kind, lr, patience)
    top5 = top5 or [0.5] * len(curve)
    out = []
    for t1, t5 in zip(curve, top5):
        sched.step({"val_top1_err": t1, "val_top5_err": t5})
        out.append(sched.lr)
    return out


def test_paper_divides_by_ten_after_patience_plus_one_bad_epochs_three_times_at_most():
    curve = [0.9, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    # by hand, patience 2: a drop on the 3rd epoch in a row without a new best, then the count restarts
    expected = [1e-2, 1e-2, 1e-2, 1e-2, 1e-3,           # 0.8 at epoch 2, then 3 bad epochs
                1e-3, 1e-3, 1e-3, 1e-4,                 # new best 0.7 at epoch 6, then 3 bad
                1e-4, 1e-4, 1e-5,                       # 3 more bad: third drop
                1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5]   # never a fourth
    assert run("paper", curve) == pytest.approx(expected, rel=1e-9)


def test_paper_keeps_lr_while_improving_and_follows_top1_only():
    curve = [1.0 - 0.01 * i for i in range(12)]
    wild_top5 = [0.5, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9]
    assert run("paper", curve, top5=wild_top5) == [0.01] * 12
    flat = [0.5] * 12
    assert run("paper", flat, top5=[1.0 - 0.01 * i for i in range(12)]) != [0.01] * 12


def test_paper_patience_is_respected():
    curve = [0.5] * 8
    assert run("paper", curve, patience=1) == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    assert run("paper", curve, patience=5) == pytest.approx([0.01] * 6 + [1e-3] * 2)


def test_plateau_is_reduce_on_plateau_defaults_on_top5():
    n = 50
    # top-1 keeps improving but top-5 is flat: the seed's schedule only looks at top-5
    lrs = run("plateau", [1.0 - 0.01 * i for i in range(n)], patience=2, top5=[0.3] * n)
    # ReduceLROnPlateau defaults: patience 10 (drop on the 11th bad epoch), factor 0.1, no floor
    expected = [0.01] * 11 + [1e-3] * 11 + [1e-4] * 11 + [1e-5] * 11 + [1e-6] * 6
    assert lrs == pytest.approx(expected, rel=1e-9)
    # and top-5 improvements (beyond the 1e-4 relative threshold) keep the lr
    assert run("plateau", [0.5] * 20, top5=[0.5 - 0.01 * i for i in range(20)]) == [0.01] * 20


def test_unknown_schedule_refused_with_choices():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    with pytest.raises(ValueError, match="paper.*plateau"):
        Schedule(opt, "cosine", 0.01, 2)


def test_optimizer_is_the_papers_sgd():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], 0.01, 0.9, 5e-4)
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]) == (0.01, 0.9, 5e-4, False)


@pytest.mark.parametrize("scale,paper,seed", [(1.0, 90, 120), (0.2, 18, 24), (0.0223, 2, 3), (0.001, 1, 1)])
def test_epochs(scale, paper, seed):
    prof = tiny_profile(epoch_scale=scale)
    assert RunConfig(prof, make_toggles({"epochs": "paper"})).epochs == paper
    assert RunConfig(prof, make_toggles({"epochs": "seed"})).epochs == seed


@pytest.mark.parametrize("scale,epochs_choice,patience", [(1.0, "paper", 10), (1.0, "seed", 13), (0.5, "paper", 5),
                                                          (0.2, "paper", 2), (0.0223, "paper", 1)])
def test_patience_scales_with_the_epoch_budget(scale, epochs_choice, patience):
    cfg = RunConfig(tiny_profile(epoch_scale=scale), make_toggles({"epochs": epochs_choice}))
    assert cfg.patience == patience
    assert cfg.patience == max(1, round(10 * cfg.epochs / 90))
