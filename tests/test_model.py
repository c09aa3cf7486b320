"""core/model.py: the architecture of §3 and the init of §5, and what each model toggle does."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import tiny_profile
from core.config import RunConfig
from core.engine import build_model
from core.lrn import LRN
from core.model import AlexNet, Arch, Dropout, init_weights, keep_mask, paper_stds
from core.toggles import make_toggles

# The paper's network (§3.5), written out by hand: (in, out, kernel, groups) per conv, fc sizes.
PAPER_CONVS = [(3, 96, 11, 1), (96, 256, 5, 2), (256, 384, 3, 1), (384, 384, 3, 2), (384, 256, 3, 2)]
PAPER_FCS = [(256 * 6 * 6, 4096), (4096, 4096), (4096, 1000)]
# fan-in of one output unit of conv1..conv5, fc6..fc8 in the full-size net, by tower count
FULL_FAN_IN = {2: [3 * 121, 48 * 25, 256 * 9, 192 * 9, 192 * 9, 9216, 4096, 4096],
               1: [3 * 121, 96 * 25, 256 * 9, 384 * 9, 384 * 9, 9216, 4096, 4096]}
BIAS_ONE = [False, True, False, True, True, True, True, False]   # §5: conv2, conv4, conv5, fc6, fc7


def layers(model):
    return model.convs() + model.fcs()


def build(seed=0, profile=None, **toggles):
    return build_model(RunConfig(profile or tiny_profile(), make_toggles(toggles), seed))


# --- the full-size paper network -------------------------------------------------------------

@pytest.fixture(scope="module")
def full_model():
    torch.manual_seed(0)
    model = AlexNet(Arch())
    init_weights(model)
    return model


def test_full_model_parameter_count(full_model):
    expected = sum(o * (i // g) * k * k + o for i, o, k, g in PAPER_CONVS) + sum(i * o + o for i, o in PAPER_FCS)
    assert expected == 60_965_224
    assert sum(p.numel() for p in full_model.parameters()) == expected


def test_full_model_forward_backward_and_shapes(full_model):
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
             for m in full_model.features if isinstance(m, nn.MaxPool2d)]
    hooks.append(full_model.features[0].register_forward_hook(lambda m, i, o: sizes.insert(0, o.shape[-1])))
    full_model.train()
    x = torch.randn(2, 3, 224, 224) * 50
    out = full_model(x)
    for h in hooks:
        h.remove()
    assert out.shape == (2, 1000)
    assert sizes == [55, 27, 13, 6]
    out.logsumexp(-1).sum().backward()
    for name, p in full_model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    full_model.zero_grad(set_to_none=True)


def test_full_model_paper_init(full_model):
    for i, layer in enumerate(layers(full_model)):
        w = layer.weight.detach()
        assert abs(w.std().item() - 0.01) < 0.05 * 0.01, i
        assert abs(w.mean().item()) < 0.1 * 0.01, i
        assert torch.all(layer.bias == (1.0 if BIAS_ONE[i] else 0.0)), i


def test_paper_stds_are_exactly_001_at_full_size():
    for flips in ({}, {"groups": 1}, {"overlap_pool": False}, {"lrn": False, "dropout": "seed"}):
        arch = Arch(toggles=make_toggles(flips))
        assert paper_stds(arch) == [0.01] * 8


def test_full_model_shapes_follow_the_paper():
    model = AlexNet(Arch())
    for conv, (i, o, k, g) in zip(model.convs(), PAPER_CONVS):
        assert conv.weight.shape == (o, i // g, k, k) and conv.groups == g
    for fc, (i, o) in zip(model.fcs(), PAPER_FCS):
        assert fc.weight.shape == (o, i)
    assert (model.convs()[0].stride, model.convs()[0].padding) == ((4, 4), (2, 2))


# --- pooling, LRN, geometry --------------------------------------------------------------------

@pytest.mark.parametrize("overlap", [True, False])
def test_pooling_geometry(overlap):
    arch = Arch(width=0.125, num_classes=10, toggles=make_toggles({"overlap_pool": overlap}))
    model = AlexNet(arch)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3
    z = 3 if overlap else 2
    assert all(p.kernel_size == z and p.stride == 2 for p in pools)
    assert arch.feature_sizes() == [55, 27, 13, 6]
    # and the real maps (narrow net at 224 px: width does not change the geometry)
    sizes = []
    for p in pools:
        p.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 224, 224))
    assert sizes == [27, 13, 6]


@pytest.mark.parametrize("on", [True, False])
def test_lrn_after_relu_of_conv1_and_conv2_only(on):
    model = build(lrn=on)
    feats = list(model.features)
    lrns = [i for i, m in enumerate(feats) if isinstance(m, (LRN, nn.LocalResponseNorm))]
    if not on:
        assert lrns == [] and not any(isinstance(m, LRN) for m in model.modules())
        return
    convs = [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)]
    assert lrns == [convs[0] + 2, convs[1] + 2]
    for i in lrns:
        assert isinstance(feats[i - 1], nn.ReLU) and isinstance(feats[i + 1], nn.MaxPool2d)
        m = feats[i]
        assert (m.size, m.alpha, m.beta, m.k) == (5, pytest.approx(1e-4), 0.75, 2.0)


def test_lrn_alpha_seed_is_twice_the_paper():
    model = build(lrn_alpha="seed")
    alphas = [m.alpha for m in model.modules() if isinstance(m, LRN)]
    assert alphas == [pytest.approx(2e-4)] * 2


def test_geometry_too_small_raises():
    with pytest.raises(ValueError, match="3x3"):
        AlexNet(Arch(image_size=32, stem=(11, 4, 2)))


# --- init -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cpu_profile():
    return tiny_profile(image_size=64, width=0.25)   # the repo's "cpu" profile geometry


@pytest.mark.parametrize("groups", [2, 1])
def test_paper_init_scales_std_by_fan_in(cpu_profile, groups):
    model = build(profile=cpu_profile, groups=groups)
    for i, layer in enumerate(layers(model)):
        fan_in = layer.weight[0].numel()
        expected = 0.01 * math.sqrt(FULL_FAN_IN[groups][i] / fan_in)
        assert paper_stds(model.arch)[i] == pytest.approx(expected, rel=1e-9), i
        w = layer.weight.detach()
        if w.numel() >= 1000:
            assert w.std().item() == pytest.approx(expected, rel=0.05), i
            assert abs(w.mean().item()) < 0.1 * expected, i
        assert torch.all(layer.bias == (1.0 if BIAS_ONE[i] else 0.0)), i
    # a reduced net has smaller fan-ins: its stds must be larger than 0.01 where fan-in shrank
    assert paper_stds(model.arch)[0] > 0.01


def test_paper_literal_is_001_everywhere(cpu_profile):
    model = build(profile=cpu_profile, init="paper_literal")
    assert paper_stds(model.arch, literal=True) == [0.01] * 8
    for i, layer in enumerate(layers(model)):
        if layer.weight.numel() >= 1000:
            assert layer.weight.std().item() == pytest.approx(0.01, rel=0.05), i
        assert torch.all(layer.bias == (1.0 if BIAS_ONE[i] else 0.0)), i


@pytest.mark.parametrize("init", ["paper", "paper_literal"])
def test_output_bias_seed_sets_fc8_bias_to_one(init):
    assert torch.all(build(init=init, output_bias="seed").fcs()[-1].bias == 1.0)
    assert torch.all(build(init=init).fcs()[-1].bias == 0.0)


def test_pytorch_init_is_not_the_paper_init():
    model = build(init="pytorch")
    ls = layers(model)
    assert not torch.all(ls[1].bias == 1.0) and not torch.all(ls[0].bias == 0.0)
    assert not torch.all(ls[-1].bias == 0.0)
    # PyTorch's default: uniform weights bounded by 1/sqrt(fan_in)
    for layer in ls:
        assert layer.weight.abs().max() <= 1 / math.sqrt(layer.weight[0].numel()) + 1e-7


def test_same_seed_same_weights_other_seed_differs():
    a, b, c = build(seed=3), build(seed=3), build(seed=4)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.convs()[0].weight, c.convs()[0].weight)


# --- two towers -------------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [2, 1])
def test_towers(groups):
    model = build(groups=groups)
    convs = model.convs()
    grouped = [False, True, False, True, True]
    for conv, g in zip(convs, grouped):
        expect_in = conv.in_channels // 2 if (g and groups == 2) else conv.in_channels
        assert conv.weight.shape[1] == expect_in
    gen = torch.Generator().manual_seed(0)
    for idx, conv in enumerate(convs[1:], start=1):
        cin, cout = conv.in_channels, conv.out_channels
        x = torch.randn(1, cin, 7, 7, generator=gen)
        x2 = x.clone()
        x2[:, cin // 2:] += torch.randn(1, cin - cin // 2, 7, 7, generator=gen)
        with torch.no_grad():
            y, y2 = conv(x), conv(x2)
        first_half_same = torch.equal(y[:, :cout // 2], y2[:, :cout // 2])
        own_tower_only = grouped[idx] and groups == 2
        assert first_half_same == own_tower_only, f"conv{idx + 1}"
        assert not torch.equal(y[:, cout // 2:], y2[:, cout // 2:])


# --- the head: final ReLU and dropout ---------------------------------------------------------

@pytest.mark.parametrize("final_relu", [True, False])
def test_final_relu(final_relu):
    model = build(final_relu=final_relu).eval()
    assert isinstance(model.classifier[-1], nn.ReLU) == final_relu
    with torch.no_grad():
        logits = model(torch.randn(8, 3, 32, 32) * 50)
    assert (logits.min() >= 0) if final_relu else (logits.min() < 0)
    if final_relu:
        assert (logits == 0).any()   # the clamp is real: some classes get exactly 0


def _head_types(model):
    return [type(m).__name__ for m in model.classifier]


def test_dropout_module_order():
    assert _head_types(build(dropout="paper")) == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert _head_types(build(dropout="seed")) == ["Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]
    assert [m.p for m in build().classifier if isinstance(m, Dropout)] == [0.5, 0.5]


@pytest.mark.parametrize("q", [0.5, 0.75, 0.3])   # random bytes (q a whole number of 256ths) and bernoulli_
def test_dropout_keeps_each_unit_with_probability_one_minus_p(q):
    torch.manual_seed(0)
    keep = keep_mask((1000, 1000), q, torch.zeros(()))
    assert keep.unique().tolist() == pytest.approx([0.0, 1 / q])
    kept = (keep > 0).double().mean().item()
    assert abs(kept - q) < 4 * (q * (1 - q) / 1e6) ** 0.5                  # within 4 standard errors
    rows = (keep > 0).double().mean(1)                                     # no structure across units
    assert rows.std().item() == pytest.approx((q * (1 - q) / 1000) ** 0.5, rel=0.15)
    torch.manual_seed(0)
    assert torch.equal(keep, keep_mask((1000, 1000), q, torch.zeros(())))   # the seed decides the mask


def _linear_io(model, x):
    """Inputs and outputs of fc6, fc7, fc8 in one training-mode forward."""
    record = []
    hooks = [fc.register_forward_hook(lambda m, i, o: record.append((i[0].detach().clone(), o.detach().clone())))
             for fc in model.fcs()]
    model.train()
    with torch.no_grad():
        feats = torch.flatten(model.features(x), 1).clone()
        model(x)
    for h in hooks:
        h.remove()
    return feats, record


@pytest.mark.parametrize("mode", ["paper", "seed"])
def test_dropout_placement_by_activations(mode):
    """paper: dropout on the outputs of fc6 and fc7 (after their ReLU), none before fc6.
    seed: dropout on the inputs of fc6 and fc7, none before fc8."""
    torch.manual_seed(0)
    model = build(dropout=mode)                      # paper init: hidden biases 1, activations > 0
    feats, rec = _linear_io(model, torch.randn(4, 3, 32, 32) * 50)
    (in6, out6), (in7, out7), (in8, _) = rec

    def dropped(inp, act):
        """inp is inverted dropout of act: each unit 0 or 2*act, a real share of each."""
        zero, kept = inp == 0, torch.isclose(inp, 2 * act)
        live = act > 0
        return bool(torch.all(zero | kept)) and 0.3 < (zero & live).float().sum() / live.float().sum() < 0.7

    assert (feats > 0).float().mean() > 0.5 and (torch.relu(out6) > 0).float().mean() > 0.5
    if mode == "paper":
        assert torch.equal(in6, feats)
        assert dropped(in7, torch.relu(out6)) and dropped(in8, torch.relu(out7))
    else:
        assert dropped(in6, feats) and dropped(in7, torch.relu(out6))
        assert torch.equal(in8, torch.relu(out7))


def test_no_dropout_in_eval_mode():
    model = build().eval()
    x = torch.randn(2, 3, 32, 32) * 50
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
