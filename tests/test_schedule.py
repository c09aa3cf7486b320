"""core/schedule.py and the epoch budget of core/config.py (§5)."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_profile
from core.config import RunConfig
from core.schedule import Schedule, build_optimizer
from core.toggles import Toggles, make_toggles


def run(kind, curve, lr=0.01, patience=2, top5=None):
    """lr after each epoch's step on a scripted validation curve."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = Schedule(opt, Toggles(lr_schedule=kind), lr, patience)
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


def test_plateau_is_reduce_on_plateau_on_top5_with_the_scaled_patience():
    n = 50
    # top-1 keeps improving but top-5 is flat: the seed's schedule only looks at top-5
    lrs = run("plateau", [1.0 - 0.01 * i for i in range(n)], patience=10, top5=[0.3] * n)
    # ReduceLROnPlateau: patience 10 at 90 epochs (drop on the 11th bad epoch), factor 0.1, no floor
    expected = [0.01] * 11 + [1e-3] * 11 + [1e-4] * 11 + [1e-5] * 11 + [1e-6] * 6
    assert lrs == pytest.approx(expected, rel=1e-9)
    # scaled to patience 2 (the cpu profile): a drop on every third bad epoch, no cap at three drops
    lrs = run("plateau", [0.5] * 12, patience=2, top5=[0.3] * 12)
    expected = [0.01] * 3 + [1e-3] * 3 + [1e-4] * 3 + [1e-5] * 3
    assert lrs == pytest.approx(expected, rel=1e-9)
    # and top-5 improvements (beyond the 1e-4 relative threshold) keep the lr
    assert run("plateau", [0.5] * 20, top5=[0.5 - 0.01 * i for i in range(20)]) == [0.01] * 20


def test_unknown_schedule_refused_with_choices():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    with pytest.raises(ValueError, match="paper.*plateau"):
        Schedule(opt, Toggles(lr_schedule="cosine"), 0.01, 2)


class Two(torch.nn.Module):
    """One weight (2-d) and one bias, with gradients set by hand."""
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[1.0, -2.0]], dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float64))


def steps(update, bias_decay, grads, lrs, m=0.9, wd=0.1):
    model = Two()
    opt = build_optimizer(model, lrs[0], m, wd, Toggles(momentum=update, bias_decay=bias_decay))
    for (gw, gb), lr in zip(grads, lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        model.w.grad = torch.tensor([gw], dtype=torch.float64)
        model.b.grad = torch.tensor([gb], dtype=torch.float64)
        opt.step()
    return model.w.detach().numpy().ravel().tolist(), model.b.detach().numpy().ravel().tolist()


GRADS = [([0.5, 1.0], 0.2), ([-1.0, 0.5], -0.4), ([0.25, 0.25], 0.1)]
LRS = [0.1, 0.1, 0.01]   # an lr drop before the third step


def by_hand(update, bias_decay, m=0.9, wd=0.1):
    """The two update rules written out step by step (§5 and torch.optim.SGD's documentation)."""
    w, b = [1.0, -2.0], [0.5]
    vw, vb = [0.0, 0.0], [0.0]
    for (gw, gb), lr in zip(GRADS, LRS):
        dw = [g + wd * x for g, x in zip(gw, w)]
        db = [gb + (wd * b[0] if bias_decay else 0.0)]
        if update == "paper":    # v <- m v - lr (g + wd w);  w <- w + v
            vw = [m * v - lr * d for v, d in zip(vw, dw)]
            vb = [m * vb[0] - lr * db[0]]
            w, b = [x + v for x, v in zip(w, vw)], [b[0] + vb[0]]
        else:                    # buf <- m buf + (g + wd w) (buf = g on the first step);  w <- w - lr buf
            first = vw == [0.0, 0.0] and vb == [0.0]
            vw = dw if first else [m * v + d for v, d in zip(vw, dw)]
            vb = db if first else [m * vb[0] + db[0]]
            w, b = [x - lr * v for x, v in zip(w, vw)], [b[0] - lr * vb[0]]
    return w, b


@pytest.mark.parametrize("update", ["paper", "pytorch"])
@pytest.mark.parametrize("bias_decay", [False, True])
def test_update_rules_match_hand_computed_steps(update, bias_decay):
    w, b = steps(update, bias_decay, GRADS, LRS)
    ew, eb = by_hand(update, bias_decay)
    assert w == pytest.approx(ew, abs=1e-12) and b == pytest.approx(eb, abs=1e-12)


def test_the_two_momentum_rules_agree_at_a_constant_lr_and_differ_after_a_drop():
    same = [steps(u, False, GRADS, [0.1] * 3) for u in ("paper", "pytorch")]
    assert same[0][0] == pytest.approx(same[1][0], abs=1e-12)
    drop = [steps(u, False, GRADS, LRS) for u in ("paper", "pytorch")]
    assert drop[0][0] != pytest.approx(drop[1][0], abs=1e-6)


def test_bias_decay_only_touches_the_biases():
    a, b = steps("paper", False, GRADS, LRS), steps("paper", True, GRADS, LRS)
    assert a[0] == b[0] and a[1] != b[1]


def test_optimizer_groups():
    model = Two()
    opt = build_optimizer(model, 0.01, 0.9, 5e-4, Toggles(momentum="pytorch"))
    assert isinstance(opt, torch.optim.SGD)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    assert (opt.param_groups[0]["momentum"], opt.param_groups[0]["nesterov"]) == (0.9, False)
    assert [len(g["params"]) for g in build_optimizer(model, 0.01, 0.9, 5e-4, Toggles(bias_decay=True)).param_groups] == [2]
    with pytest.raises(ValueError, match="paper.*pytorch"):
        build_optimizer(model, 0.01, 0.9, 5e-4, Toggles(momentum="adam"))


@pytest.mark.parametrize("scale,paper,seed", [(1.0, 90, 120), (0.2, 18, 24), (0.0223, 2, 3), (0.001, 1, 1)])
def test_epochs(scale, paper, seed):
    prof = tiny_profile(epoch_scale=scale)
    assert RunConfig(prof, make_toggles({"epochs": "paper"})).epochs == paper
    assert RunConfig(prof, make_toggles({"epochs": "seed"})).epochs == seed


@pytest.mark.parametrize("scale,epochs_choice,patience", [(1.0, "paper", 10), (1.0, "seed", 10), (0.5, "paper", 5),
                                                          (0.2, "paper", 2), (0.2, "seed", 2), (0.0223, "paper", 1)])
def test_patience_scales_with_the_profile_only(scale, epochs_choice, patience):
    """epochs=seed changes the number of epochs and nothing else: the patience stays."""
    cfg = RunConfig(tiny_profile(epoch_scale=scale), make_toggles({"epochs": epochs_choice}))
    assert cfg.patience == patience
