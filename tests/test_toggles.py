"""core/toggles.py: every registered deviation does something, where its entry says it does,
and nothing elsewhere (so paired comparisons stay paired)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import CROP, ViewLogits, tiny_profile, tta_table
from core.augment import draw_epoch
from core.config import RunConfig
from core.engine import build_model, build_pipeline, evaluate
from core.schedule import Schedule, build_optimizer
from core.toggles import REGISTRY, NAMED, Toggles, ToggleError, as_dict, differences, make_toggles

FLIPS = [(name, value) for name, t in REGISTRY.items() for value in t.deviations]
PLACES = ("model", "data", "schedule", "optimizer", "eval")


def config(**toggles) -> RunConfig:
    return RunConfig(tiny_profile(), make_toggles(toggles), seed=0)


# --- one observation per place ---------------------------------------------------------------

def observe_model(cfg):
    model = build_model(cfg).eval()
    x = torch.randn(3, 3, CROP, CROP, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        out = model(x)
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}, out


def same_model(a, b) -> bool:
    (ra, sa, oa), (rb, sb, ob) = a, b
    return ra == rb and sa.keys() == sb.keys() and \
        all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa) and torch.equal(oa, ob)


def observe_data(cfg, data):
    train = data.train
    draws = draw_epoch(len(train.labels), train.images.shape[-1], CROP, cfg.seed, epoch=1)
    pipe = build_pipeline(cfg, data.stats)
    images = np.asarray(train.images)[draws.order.numpy()]
    return torch.cat([pipe.train_batch(images[s:s + 7], draws, s) for s in range(0, len(images), 7)])


TOP1 = [0.9, 0.8, 0.7] + [0.7] * 27       # improves, then a long plateau
TOP5 = [0.5] * 30                          # flat from the start


def observe_schedule(cfg):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.profile.lr)
    sched = Schedule(opt, cfg.toggles, cfg.profile.lr, cfg.patience)
    lrs = []
    for t1, t5 in zip(TOP1, TOP5):
        sched.step({"val_top1_err": t1, "val_top5_err": t5})
        lrs.append(sched.lr)
    return cfg.epochs, lrs


def observe_optimizer(cfg):
    """The weights after four SGD steps on fixed inputs with an lr drop after the second."""
    model = build_model(cfg)
    p = cfg.profile
    opt = build_optimizer(model, p.lr, p.momentum, p.weight_decay, cfg.toggles)
    x = torch.randn(4, 3, CROP, CROP, generator=torch.Generator().manual_seed(2)) * 50
    y = torch.tensor([0, 1, 2, 0])
    for step in range(4):
        if step == 2:
            for g in opt.param_groups:
                g["lr"] /= 10
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.eval()(x), y).backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def observe_eval(cfg, data):
    val = data.val
    model = ViewLogits(tta_table(val.labels, len(val.classes)))
    pipe = build_pipeline(cfg, data.stats)
    return evaluate(model, pipe, val, batch_size=len(val.labels), ten_crop=True,
                    average=cfg.toggles.tta_average, channels_last=False)


def observe(place, cfg, data):
    if place == "model":
        return observe_model(cfg)
    if place == "data":
        return observe_data(cfg, data)
    if place == "schedule":
        return observe_schedule(cfg)
    if place == "optimizer":
        return observe_optimizer(cfg)
    return observe_eval(cfg, data)


def same(place, a, b) -> bool:
    if place == "model":
        return same_model(a, b)
    if place == "data":
        return a.shape == b.shape and torch.equal(a, b)
    if place == "optimizer":
        return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
    return a == b


@pytest.fixture(scope="module")
def baseline(shared_tiny_data):
    cfg = config()
    return {place: observe(place, cfg, shared_tiny_data) for place in PLACES}


@pytest.mark.parametrize("name,value", FLIPS, ids=[f"{n}={v}" for n, v in FLIPS])
def test_flip_shows_where_the_registry_says_and_nowhere_else(name, value, baseline, shared_tiny_data):
    toggle = REGISTRY[name]
    assert toggle.touches in PLACES
    cfg = config(**{name: value})
    assert differences(cfg.toggles) == {name: value}
    for place in PLACES:
        changed = not same(place, observe(place, cfg, shared_tiny_data), baseline[place])
        if place == toggle.touches:
            assert changed, f"{name}={value!r} is a silent no-op in {place}"
        elif place in ("model", "data"):
            # paired comparisons: a toggle that is not about the model/data must leave it identical
            assert not changed, f"{name}={value!r} also changes the {place}"


# --- the registry and make_toggles ------------------------------------------------------------

def test_defaults_are_the_paper():
    t = Toggles()
    for name, toggle in REGISTRY.items():
        assert getattr(t, name) == toggle.paper
        assert toggle.deviations and toggle.paper not in toggle.deviations
        assert toggle.choices[0] == toggle.paper and toggle.deviation == toggle.deviations[0]
    assert differences(t) == {}
    assert set(NAMED) <= set(REGISTRY)
    assert list(as_dict(t)) == list(REGISTRY)


def test_toggles_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Toggles().lrn = False


def test_every_choice_is_accepted():
    for name, toggle in REGISTRY.items():
        for value in toggle.choices:
            assert getattr(make_toggles({name: value}), name) == value


def test_unknown_toggle_refused_with_the_valid_names():
    with pytest.raises(ToggleError) as err:
        make_toggles({"lrm": False}, "grids.x")
    msg = str(err.value)
    assert "lrm" in msg and "grids.x" in msg
    assert all(name in msg for name in REGISTRY)


@pytest.mark.parametrize("name,bad", [("lrn", 1), ("lrn", "true"), ("final_relu", 0), ("groups", 2.0),
                                      ("groups", "2"), ("groups", True), ("groups", 4), ("init", "Paper"),
                                      ("pca", None), ("tta_average", "mean")])
def test_invalid_value_refused_with_the_choices(name, bad):
    with pytest.raises(ToggleError) as err:
        make_toggles({name: bad})
    msg = str(err.value)
    assert name in msg
    assert all(repr(c) in msg for c in REGISTRY[name].choices)


def test_differences_lists_only_flips():
    t = make_toggles({"lrn": False, "groups": 1, "init": "paper"})
    assert differences(t) == {"lrn": False, "groups": 1}
