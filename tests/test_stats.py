"""Report statistics: paired effects, intervals, tests, Holm, power, factorial effects."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from ablations.stats import claim_status, factorial_effects, holm, paired_effect, seeds_for, verdict


def test_clear_paired_effect_hurts_and_interval_covers_the_mean():
    d = np.array([0.021, 0.018, 0.025, 0.019, 0.022])
    e = holm({"x": paired_effect(d)})["x"]
    assert e.n == 5 and e.mean == pytest.approx(d.mean())
    assert e.ci[0] < e.mean < e.ci[1] and e.ci[0] > 0
    assert e.ci_method == "t" and e.p_wilcoxon is None      # Wilcoxon only from 6 seeds
    # the t-interval: mean +- t_{0.975, n-1} * sd / sqrt(n)
    half = st.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert e.ci[1] - e.mean == pytest.approx(half)
    assert verdict(e) == "hurts"
    assert verdict(holm({"x": paired_effect(-d)})["x"]) == "helps"


def test_noise_is_not_resolved_and_says_how_many_seeds():
    d = np.array([0.01, -0.008, 0.004])
    e = holm({"x": paired_effect(d)})["x"]
    assert e.ci[0] < 0 < e.ci[1]
    v = verdict(e)
    assert v.startswith("not resolved at n=3") and f"~{e.seeds_needed} seeds" in v
    assert e.seeds_needed > 3


def test_wilcoxon_from_six_and_bootstrap_from_ten_seeds():
    rng = np.random.default_rng(0)
    six = paired_effect(rng.normal(0.01, 0.005, 6))
    assert six.p_wilcoxon is not None and six.p == six.p_wilcoxon
    ten = paired_effect(rng.normal(0.01, 0.005, 10))
    assert ten.ci_method == "bootstrap BCa" and ten.ci[0] < ten.mean < ten.ci[1]


def test_holm_adjusts_like_the_step_down_procedure():
    effects = {k: paired_effect(np.array(v)) for k, v in
               {"a": [0.03, 0.031, 0.029], "b": [0.01, 0.02, 0.015], "c": [0.01, -0.01, 0.002]}.items()}
    adjusted = holm(effects)
    ps = sorted((effects[k].p, k) for k in effects)
    m = len(ps)
    running = 0.0
    for i, (p, k) in enumerate(ps):          # Holm: max over the running (m - i) * p, capped at 1
        running = max(running, min(1.0, (m - i) * p))
        assert adjusted[k].p_holm == pytest.approx(running)


def test_seeds_for_a_one_sd_effect_is_about_ten():
    n = seeds_for(1.0, 1.0)
    assert 9 <= n <= 12                      # paired t-test, alpha 0.05, power 0.8
    assert seeds_for(0.5, 1.0) > n and seeds_for(0.0, 1.0) is None


def test_claim_status_directions():
    up = paired_effect(np.array([0.02, 0.021, 0.019]))
    assert claim_status(up, 0.014).startswith("reproduced")
    down = paired_effect(np.array([-0.02, -0.021, -0.019]))
    assert claim_status(down, 0.014).startswith("contradicted")
    noise = paired_effect(np.array([0.01, -0.01, 0.003]))
    assert claim_status(noise, 0.014).startswith("not resolved")


def test_factorial_effects_recover_a_known_design():
    rng = np.random.default_rng(0)
    rows = []
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                for _ in range(3):
                    y = 0.4 + 0.05 * a - 0.02 * b + 0.0 * c + 0.03 * a * b + rng.normal(0, 0.002)
                    rows.append({"a": a, "b": b, "c": c, "err": y})
    fx = factorial_effects(pd.DataFrame(rows), ["a", "b", "c"], "err").set_index("term")
    # main effect = mean difference over the other factors; interaction = difference of differences
    assert fx.loc["a", "effect"] == pytest.approx(0.05 + 0.03 / 2, abs=0.004)
    assert fx.loc["b", "effect"] == pytest.approx(-0.02 + 0.03 / 2, abs=0.004)
    assert fx.loc["a:b", "effect"] == pytest.approx(0.03, abs=0.004)
    assert fx.loc["c", "ci_low"] < 0 < fx.loc["c", "ci_high"]
    assert fx.loc["a", "p"] < 0.001
