"""core/config.py and ablations/grids.py: experiments.yaml is loaded strictly and the grids expand
to the designs they describe."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ablations.grids import expand
from ablations.runner import plan
from conftest import tiny_profile
from core.config import ConfigError, Profile, RunConfig, load_experiments
from core.toggles import NAMED, REGISTRY, Toggles, as_dict, make_toggles

REPO_YAML = Path(__file__).resolve().parent.parent / "experiments.yaml"

MINIMAL = """
baseline: {}
profiles:
  small: {image_size: 32, width: 0.125, stem: [5, 2, 1]}
grids:
  one: {one_at_a_time: {lrn: false}}
"""


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "experiments.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def experiments():
    return load_experiments(REPO_YAML)


# --- the repository's experiments.yaml ----------------------------------------------------------

def test_repo_yaml_loads(experiments):
    assert experiments.baseline == Toggles()
    assert {"smoke", "cpu", "paper"} <= set(experiments.profiles)
    paper = experiments.profile("paper")
    assert (paper.image_size, paper.width, paper.stem, paper.prep_size, paper.num_classes) == (224, 1.0, (11, 4, 2), 256, 1000)
    assert isinstance(experiments.profile("cpu").epoch_scale, float)


@pytest.mark.parametrize("grid,count", [("deviations", 7), ("claims", 4), ("factorial", 64), ("fractional", 32), ("seed-code", 11),
                                        ("seed-to-paper", 13), ("init-diagnosis", 13)])
def test_grid_sizes(experiments, grid, count):
    variants = expand(experiments, grid)
    assert len(variants) == count
    assert len({v.name for v in variants}) == count
    assert len({v.toggles for v in variants}) == count          # no two variants are the same run


def flipped(variant, base) -> dict:
    a, b = as_dict(variant.toggles), as_dict(base)
    return {k: v for k, v in a.items() if v != b[k]}


def test_deviations_flip_each_named_toggle_alone(experiments):
    variants = expand(experiments, "deviations")
    assert variants[0].name == "baseline" and variants[0].toggles == Toggles()
    flips = [flipped(v, Toggles()) for v in variants[1:]]
    assert all(len(f) == 1 for f in flips)
    assert [next(iter(f)) for f in flips] == list(NAMED)
    assert all(f[n] == REGISTRY[n].deviation for f in flips for n in f)


def test_claims_remove_each_measured_choice_alone(experiments):
    """The paper's ablation claims: LRN (§3.3), overlapping pooling (§3.4), PCA lighting (§4.1)."""
    from ablations.report import CLAIMS
    variants = expand(experiments, "claims")
    assert variants[0].name == "baseline" and variants[0].toggles == Toggles()
    assert [flipped(v, Toggles()) for v in variants[1:]] == [{t: value} for _, (t, value), _ in CLAIMS]


def test_factorial_is_the_full_product(experiments):
    combos = {tuple(getattr(v.toggles, n) for n in NAMED) for v in expand(experiments, "factorial")}
    assert len(combos) == 2 ** 6
    assert all(set(getattr(v.toggles, n) for v in expand(experiments, "factorial")) ==
               {REGISTRY[n].paper, REGISTRY[n].deviation} for n in NAMED)


def test_fractional_is_the_even_half_of_the_product(experiments):
    """I = ABCDEF: every cell has an even number of deviations; every pair of toggles sees all four
    level combinations equally often (main effects and two-way interactions are estimable)."""
    import itertools
    cells = [tuple(int(getattr(v.toggles, n) != REGISTRY[n].paper) for n in NAMED)
             for v in expand(experiments, "fractional")]
    assert len(set(cells)) == 32 and all(sum(c) % 2 == 0 for c in cells)
    assert (0,) * 6 in cells
    for i, j in itertools.combinations(range(6), 2):
        counts = {}
        for c in cells:
            counts[(c[i], c[j])] = counts.get((c[i], c[j]), 0) + 1
        assert counts == {(0, 0): 8, (0, 1): 8, (1, 0): 8, (1, 1): 8}


def test_seed_to_paper_restores_one_toggle_each(experiments):
    variants = expand(experiments, "seed-to-paper")
    seed = variants[0].toggles
    assert variants[0].name == "seed"
    for v in variants[1:]:
        (name, value), = flipped(v, seed).items()
        assert value == REGISTRY[name].paper


def test_unknown_grid_and_profile_list_the_choices(experiments):
    with pytest.raises(ConfigError) as err:
        expand(experiments, "nope")
    assert all(g in str(err.value) for g in experiments.grids)
    with pytest.raises(ConfigError) as err:
        experiments.profile("huge")
    assert all(p in str(err.value) for p in experiments.profiles)


def test_plan_crosses_variants_and_seeds(experiments):
    cells = plan(experiments, "deviations", "smoke", seeds=2)
    assert len(cells) == 14 and len({c.config.hash() for c in cells}) == 14
    with pytest.raises(ConfigError):
        plan(experiments, "deviations", "smoke", seeds=0)


# --- strict loading ---------------------------------------------------------------------------

def test_minimal_yaml_loads(tmp_path):
    exp = load_experiments(write(tmp_path, MINIMAL))
    prof = exp.profile("small")
    assert prof.stem == (5, 2, 1) and prof.width == 0.125 and prof.batch_size == 128
    assert [v.name for v in expand(exp, "one")] == ["baseline", "lrn=false"]


@pytest.mark.parametrize("text,names", [
    ("baseline: {}\nprofiles: {a: {}}\ngrids: {g: {}}\ngrid: {}\n", ["grid"]),
    (MINIMAL.replace("width: 0.125", "widht: 0.125"), ["widht", "profiles.small"]),
    (MINIMAL.replace("baseline: {}", "baseline: {lrn: 1}"), ["lrn", "baseline"]),
    (MINIMAL.replace("baseline: {}", "baseline: {dropuot: seed}"), ["dropuot"]),
    (MINIMAL.replace("image_size: 32", "image_size: big"), ["image_size"]),
    (MINIMAL.replace("image_size: 32", "image_size: 32.5"), ["image_size"]),
    (MINIMAL.replace("width: 0.125", "width: '0.125'"), ["width"]),
    (MINIMAL.replace("stem: [5, 2, 1]", "stem: [5, 2]"), ["stem"]),
    (MINIMAL.replace("stem: [5, 2, 1]", "stem: [5, 2, 1.5]"), ["stem"]),
    (MINIMAL.replace("image_size: 32", "image_size: 32, channels_last: 1"), ["channels_last"]),
    (MINIMAL.replace("image_size: 32", "image_size: 32, batch_size: true"), ["batch_size"]),
    (MINIMAL.replace("image_size: 32", "image_size: 32, max_per_class: '12'"), ["max_per_class"]),
    (MINIMAL.replace("image_size: 32", "image_size: 32, precision: fp16"), ["precision", "bf16", "auto"]),
    (MINIMAL.replace("image_size: 32", "image_size: 32, dataset: cifar"), ["dataset", "imagenette"]),
    (MINIMAL.replace("small: {", "small: [").replace("1]}", "1]]"), ["small"]),
], ids=["top-level-key", "profile-key", "toggle-int-for-bool", "toggle-name", "int-key-str", "int-key-float",
        "float-key-str", "stem-len", "stem-float", "bool-key-int", "int-key-bool", "optional-int-key-str",
        "precision", "dataset", "profile-not-mapping"])
def test_bad_yaml_refused_naming_the_key(tmp_path, text, names):
    with pytest.raises(ConfigError) as err:
        load_experiments(write(tmp_path, text))
    for name in names:
        assert name in str(err.value)


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="YAML"):
        load_experiments(write(tmp_path, "baseline: {\nprofiles: [\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_experiments(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_experiments(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError):
        load_experiments(write(tmp_path, "baseline: {}\nprofiles: {}\ngrids: {}\n"))


def test_anchor_keys_are_allowed(tmp_path):
    text = "_shared: &s {lrn: false}\n" + MINIMAL.replace("one: {one_at_a_time: {lrn: false}}",
                                                          "one: {variants: {nolrn: *s}}")
    exp = load_experiments(write(tmp_path, text))
    assert expand(exp, "one")[1].toggles.lrn is False


@pytest.mark.parametrize("grid", [
    "g: {variants: {bad: {init: pytorch, output_bias: seed}}}",
    "g: {base: {init: pytorch}, one_at_a_time: {output_bias: seed}}",
    "g: {factorial: {init: [paper, pytorch], output_bias: [paper, seed]}}",
])
def test_output_bias_seed_needs_the_paper_init(tmp_path, grid):
    exp = load_experiments(write(tmp_path, MINIMAL.replace("one: {one_at_a_time: {lrn: false}}", grid)))
    with pytest.raises(ConfigError, match="output_bias"):
        expand(exp, "g")


@pytest.mark.parametrize("grid,bad", [
    ("g: {one_at_a_time: {lrn: 0}}", "lrn"),
    ("g: {factorial: {lrn: true}}", "factorial"),
    ("g: {variants: {x: {groups: 3}}}", "groups"),
    ("g: {one_at_a_time: {lrn: false}, extra: 1}", "extra"),
    ("g: {variants: {baseline: {lrn: false}}}", "baseline"),
])
def test_bad_grids_refused(tmp_path, grid, bad):
    exp = load_experiments(write(tmp_path, MINIMAL.replace("one: {one_at_a_time: {lrn: false}}", grid)))
    with pytest.raises(ConfigError, match=bad):
        expand(exp, "g")


# --- the run config ---------------------------------------------------------------------------

def test_hash_is_stable_and_separates_runs():
    prof = tiny_profile()
    a = RunConfig(prof, make_toggles({}), 0)
    assert a.hash() == a.hash() == RunConfig(tiny_profile(), make_toggles({}), 0).hash()
    assert RunConfig(prof, make_toggles({}), 1).hash() != a.hash()
    hashes = {RunConfig(prof, make_toggles({n: t.deviation}), 0).hash() for n, t in REGISTRY.items()}
    assert len(hashes) == len(REGISTRY) and a.hash() not in hashes
    assert RunConfig(tiny_profile(lr=0.02), make_toggles({}), 0).hash() != a.hash()
    assert RunConfig(tiny_profile(description="other words"), make_toggles({}), 0).hash() == a.hash()


def test_profile_checks_itself():
    """Built directly, not only from YAML: geometry, precision and dataset are checked."""
    for bad in (dict(image_size=12, stem=(5, 2, 1)), dict(precision="fp16"), dict(dataset="cifar")):
        with pytest.raises(ConfigError):
            Profile(name="p", image_size=bad.pop("image_size", 32), stem=bad.pop("stem", (5, 2, 1)), **bad)


def test_yaml_reads_exponent_floats(tmp_path):
    ex = load_experiments(write(tmp_path, MINIMAL.replace("image_size: 32", "image_size: 32, lr: 1e-2")))
    assert ex.profile("small").lr == 0.01


def test_resolved_holds_the_derived_values():
    cfg = RunConfig(tiny_profile(epoch_scale=0.2), make_toggles({"epochs": "seed"}), 3)
    r = cfg.resolved()
    assert r["seed"] == 3 and r["toggles"]["epochs"] == "seed"
    assert {k: r["derived"][k] for k in ("epochs_run", "prep_size", "lr_patience")} == \
        {"epochs_run": 24, "prep_size": 37, "lr_patience": 2}   # patience: 10 x epoch_scale, not x epochs
    assert r["profile"]["stem"] == [5, 2, 1]


@pytest.mark.parametrize("size,prep", [(224, 256), (32, 37), (64, 73), (48, 55)])
def test_prep_size_is_the_256_equivalent(size, prep):
    assert Profile(name="p", image_size=size, stem=(5, 2, 1)).prep_size == prep
