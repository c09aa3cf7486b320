"""The primary analysis, the factorial fit, the planner and the report on synthetic stores with
known effects and injected late starts (a MemoryTracker stands in for MLflow)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from ablations import planner, report, stats
from ablations.runs import ReportError, load
from core.toggles import NAMED, REGISTRY
from core.tracking import MemoryRun, MemoryTracker

NORMAL = [0.89, 0.80, 0.70, 0.60, 0.50, 0.45]       # 6 epochs, leaves chance after one
LATE = [0.91, 0.90, 0.91, 0.90, 0.70, 0.60]         # 4 epochs at chance: a late start at scale 0.2


def add_run(tracker, grid, variant, seed, toggles, final, curve=NORMAL, status="FINISHED", base="baseline",
            commit="abc1234", config_hash=None):
    params = {name: str(toggles.get(name, t.paper)) for name, t in REGISTRY.items()}
    params.update(seed=str(seed), epoch_scale="0.2", num_classes="10", precision="fp32", epochs_run=str(len(curve)),
                  dataset="imagenette")
    tags = {"grid": grid, "variant": variant, "role": "cell", "profile": "cpu", "base_variant": base,
            "git_commit": commit, "config_hash": config_hash or f"{variant}-{seed}"}
    run = MemoryRun(f"run{len(tracker.runs)}", f"{variant}/seed{seed}", params, tags, status=status)
    for step, v in enumerate(curve[:-1] + [final + 0.01 if curve is NORMAL else curve[-1]], 1):
        run.metrics.setdefault("val_top1_err", []).append((step, v))   # the centre-crop history
        run.metrics.setdefault("lr", []).append((step, 0.01))
    for key, value in {"val10_top1_err": final, "val10_top5_err": final / 3,
                       "val_top5_err": final / 3, "wall_time_s": 60.0}.items():
        run.metrics[key] = [(len(curve), value)]
    tracker.runs.append(run)
    return run


EFFECTS = {"lrn=false": ({"lrn": False}, 0.03), "overlap_pool=false": ({"overlap_pool": False}, 0.0),
           "init=pytorch": ({"init": "pytorch"}, -0.02)}


def one_at_a_time(seeds=12, sd=0.004, late_seeds=(3,), rng_seed=0):
    """A deviations-like grid with known effects; the base run of each seed in late_seeds starts late."""
    rng = np.random.default_rng(rng_seed)
    tracker = MemoryTracker()
    for seed in range(seeds):
        level = 0.35 + rng.normal(0, sd)   # what the seed shares across variants
        if seed in late_seeds:
            add_run(tracker, "dev", "baseline", seed, {}, 0.60, curve=LATE)
        else:
            add_run(tracker, "dev", "baseline", seed, {}, level + rng.normal(0, sd))
        for name, (flip, effect) in EFFECTS.items():
            add_run(tracker, "dev", name, seed, flip, level + effect + rng.normal(0, sd))
    return tracker


def test_late_starts_are_dropped_and_the_known_effects_recovered():
    g = load(one_at_a_time(), "dev")
    assert g.cells.query("variant == 'baseline' and seed == 3")["outcome"].item() == "late_start"
    fam = report.primary_effects(g)
    for name, (_, effect) in EFFECTS.items():
        e = fam[name]
        assert (e.n, e.dropped) == (11, 1)
        assert e.ci[0] <= effect <= e.ci[1]
        assert e.hl_ci[0] <= effect <= e.hl_ci[1]
    assert stats.verdict(fam["lrn=false"]) == "hurts"
    assert stats.verdict(fam["init=pytorch"]) == "helps"
    assert stats.verdict(fam["overlap_pool=false"]) == "not resolved"


def test_interval_and_verdict_never_disagree():
    """Across many random families: the family-wise interval excludes 0 exactly when Holm resolves."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        effects = {f"v{i}": stats.paired(rng.normal(rng.choice([0, 0.01, 0.02]), 0.01, rng.integers(5, 15)))
                   for i in range(rng.integers(1, 7))}
        for e in stats.family(effects).values():
            resolved = stats.verdict(e) in ("hurts", "helps")
            assert resolved == (e.ci[0] > 0 or e.ci[1] < 0), e
            status = stats.claim_status(e, 0.014)
            assert status.startswith("not resolved") != resolved


def test_holm_adjusted_p_is_the_step_down():
    effects = {k: stats.paired(np.array(v)) for k, v in
               {"a": [0.03, 0.031, 0.029, 0.03], "b": [0.01, 0.02, 0.015, 0.012], "c": [0.01, -0.01, 0.002, 0.0]}.items()}
    adjusted = stats.family(effects)
    running = 0.0
    for i, (p, k) in enumerate(sorted((e.p, k) for k, e in effects.items())):
        running = max(running, min(1.0, (3 - i) * p))
        assert adjusted[k].p_holm == pytest.approx(running)


def test_too_few_seeds_and_no_spread_get_no_verdict():
    few = stats.family({"x": stats.paired([0.02, 0.021, 0.019, 0.02])})["x"]
    assert stats.verdict(few).startswith("too few seeds")
    flat = stats.family({"x": stats.paired([0.01] * 6)})["x"]
    assert stats.verdict(flat) == "not estimable (no spread)" and math.isnan(flat.p)


def test_hodges_lehmann_interval_is_the_signed_rank_one():
    """n = 10, 95%: the critical signed-rank value is 8, so the interval runs from the 9th smallest
    to the 9th largest of the 55 Walsh averages."""
    d = np.array([0.5, -1.2, 2.0, 0.3, 1.1, -0.4, 0.8, 1.7, 0.1, 0.9])
    est, (lo, hi) = stats.hodges_lehmann(d, 0.95)
    i, j = np.triu_indices(10)
    walsh = np.sort((d[i] + d[j]) / 2)
    assert est == pytest.approx(np.median(walsh))
    assert (lo, hi) == (walsh[8], walsh[-9])
    assert stats.signed_rank_counts(3).tolist() == [1, 1, 1, 2, 1, 1, 1]


def test_clopper_pearson():
    lo, hi = stats.clopper_pearson(0, 3)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 3))
    assert stats.clopper_pearson(5, 5)[1] == 1


def fractional_store(replicates=2, sd=0.005, fail=((0, "baseline"),)):
    """The 2^(6-1) half fraction with known main effects and one interaction; `fail` cells stay at chance."""
    truth = {"init": -0.03, "pca": 0.0, "lr_schedule": 0.005, "epochs": -0.02, "lrn": 0.01, "overlap_pool": 0.0}
    rng = np.random.default_rng(2)
    tracker = MemoryTracker()
    for seed in range(replicates):
        block = rng.normal(0, sd)
        for combo in itertools.product((0, 1), repeat=6):
            if sum(combo) % 2:
                continue
            flips = {t: REGISTRY[t].deviation for t, c in zip(NAMED, combo) if c}
            name = ",".join(f"{t}={str(v).lower()}" for t, v in flips.items()) or "baseline"
            y = 0.35 + block + sum(truth[t] * (c - 0.5) for t, c in zip(NAMED, combo)) \
                + 0.01 * (combo[0] - 0.5) * (combo[4] - 0.5) + rng.normal(0, sd)
            if (seed, name) in fail:
                add_run(tracker, "frac", name, seed, flips, 0.9, curve=[0.9] * 6)
            else:
                add_run(tracker, "frac", name, seed, flips, y)
    return tracker, truth


def test_factorial_fit_recovers_main_effects_with_blocks_and_hc3():
    tracker, truth = fractional_store()
    g = load(tracker, "frac")
    toggles = report.is_two_level(g)
    assert toggles == list(NAMED)
    md, fx = report.factorial_section(g, toggles)
    fx = fx.set_index("term")
    for t, effect in truth.items():
        assert fx.loc[t, "ci_low"] <= effect <= fx.loc[t, "ci_high"], t
    assert "63 learned runs of 64 (1 excluded" in md
    assert "| `init` | 31/32 [" in md and "| `pca` | 31/32 [" in md   # the failed baseline cell, counted per level


@pytest.mark.parametrize("replicates", [1, 2, 4])
def test_factorial_plan_predicts_the_fits_half_width(replicates):
    """The planner's half-width for r replicates of the 2^(6-1) fraction (parameters and HC3 counted)
    against the mean half-width factorial_fit gives on simulated runs of that design."""
    rng = np.random.default_rng(replicates)
    combos = [c for c in itertools.product((0, 1), repeat=6) if sum(c) % 2 == 0]
    widths = []
    for _ in range(60):
        rows = [{**dict(zip(NAMED, c)), "seed": r, "y": rng.normal(0, 1)} for r in range(replicates) for c in combos]
        fx = stats.factorial_fit(pd.DataFrame(rows), list(NAMED), "y").set_index("term")
        widths.append(float((fx.loc[list(NAMED), "ci_high"] - fx.loc[list(NAMED), "ci_low"]).mean() / 2))
    n, p = 32 * replicates, 1 + 6 + 15 + replicates - 1
    predicted = st.norm.ppf(0.975) * 2 / np.sqrt(n) / np.sqrt(1 - p / n)
    assert np.mean(widths) == pytest.approx(predicted, rel=0.1)
    assert stats.factorial_replicates(1.0, 32, 6, 1.0, half_width=predicted * 1.01) == replicates
    assert stats.factorial_replicates(1.0, 32, 6, 1.0, half_width=predicted * 0.99) > replicates


def test_planner_on_synthetic_stores():
    g = load(one_at_a_time(seeds=12), "dev")
    text = planner.plan(g, 6, "paired", {"1.4 points": 0.014})
    assert "learned pairs" in text and "seeds to launch" in text
    sd = float(text.split("SD of a paired difference: ")[1].split(" points")[0]) / 100
    expected = stats.pairs_needed(0.014, sd, 0.05 / 6)
    assert f"| 1.4 points | 1.40 | {expected} |" in text
    few = load(one_at_a_time(seeds=2, late_seeds=()), "dev")
    assert "too few runs to plan from" in planner.plan(few, 6, "paired", {"x": 0.014})
    tracker, _ = fractional_store()
    fact = planner.plan(load(tracker, "frac"), 31, "32", {"x": 0.014}, 0.01)
    assert "replicates (seeds)" in fact and "half-width <= 1.0" in fact


def test_report_lists_what_is_missing_running_and_duplicated(tmp_path):
    tracker = one_at_a_time(seeds=5, late_seeds=())
    add_run(tracker, "dev", "lrn=false", 5, {"lrn": False}, 0.4, status="RUNNING")
    add_run(tracker, "dev", "lrn=false", 0, {"lrn": False}, 0.4, config_hash="lrn=false-0")   # a duplicate
    add_run(tracker, "dev", "init=pytorch", 1, {"init": "pytorch"}, 0.4, status="RUNNING")   # its cell FINISHED
    md, files, g = report.build(tracker, "dev", tmp_path / "r.md")
    assert "**This grid is incomplete:**" in md
    assert "Missing cells** (4)" in md and "`baseline/seed5`" in md
    assert "Still RUNNING** (1): `lrn=false/seed5`" in md
    assert "RUNNING, though the cell has a FINISHED run** (1, not used;" in md and "`init=pytorch/seed1`" in md
    assert "Duplicate FINISHED runs** of config_hash `lrn=false-0`" in md
    assert len(files) == 3 and all(f.exists() for f in files)
    # the claims table reads the same interval as the primary table
    fam = report.primary_effects(g)
    e = fam["lrn=false"]
    detectable = stats.detectable(e.sd, e.n, 1 - e.level)
    assert f"{report.pts(e.mean, 2)} {report.interval(e.ci, 2)} (n={e.n} pairs) | {report.pct(detectable)} | " \
           f"{stats.claim_status(e, 0.014)}" in md
    # detectable: a paired t-test of that many pairs at that level has 80% power there
    from statsmodels.stats.power import TTestPower
    power = TTestPower().power(effect_size=detectable / e.sd, nobs=e.n, alpha=1 - e.level, alternative="two-sided")
    assert power == pytest.approx(0.8, abs=1e-3)


def test_a_finished_grid_with_unused_runs_is_complete(tmp_path):
    """A KILLED run whose cell was trained again is listed as left out, not as a gap in the grid."""
    tracker = one_at_a_time(seeds=5, late_seeds=())
    add_run(tracker, "dev", "lrn=false", 2, {"lrn": False}, 0.4, status="KILLED", config_hash="lrn=false-2")
    md, _, _ = report.build(tracker, "dev", tmp_path / "r.md")
    assert "incomplete" not in md and "**Complete**: every cell of every seed has a finished run" in md
    assert "**Runs left out** (their cells have finished runs):" in md
    assert "FAILED or KILLED runs** (1, not used): `lrn=false/seed2` KILLED" in md
    add_run(tracker, "dev", "lrn=false", 5, {"lrn": False}, 0.4, status="RUNNING")   # a cell not yet finished
    md, _, _ = report.build(tracker, "dev", tmp_path / "r.md")
    assert "**This grid is incomplete:**" in md and "**Complete**" not in md and "Runs left out" not in md
    assert "Still RUNNING** (1)" in md and "FAILED or KILLED runs** (1, not used)" in md


def test_detectable_from_a_main_effects_interval():
    """(z + z_power) standard errors: at that true effect, an estimate with that SE excludes 0 from
    its 95% interval with probability 0.8 (simulated)."""
    se = 0.007
    ci = (0.02 - 1.959964 * se, 0.02 + 1.959964 * se)
    d = stats.detectable_from_interval(ci)
    assert d == pytest.approx((1.959964 + 0.841621) * se, rel=1e-4)
    est = np.random.default_rng(0).normal(d, se, 200_000)
    assert np.mean(np.abs(est) > 1.959964 * se) == pytest.approx(0.8, abs=0.005)


def test_runs_of_two_commits_are_not_paired_unless_pooled():
    tracker = one_at_a_time(seeds=5, late_seeds=())
    add_run(tracker, "dev", "baseline", 7, {}, 0.35, commit="def5678")
    with pytest.raises(ReportError, match="--pool"):
        load(tracker, "dev")
    assert load(tracker, "dev", commit="abc1234").seeds == [0, 1, 2, 3, 4]
    assert load(tracker, "dev", pool=True).pooled


def test_no_runs_is_an_error():
    with pytest.raises(ReportError, match="run python run_ablation.py"):
        load(MemoryTracker(), "dev")


def test_claims_across_grids_repeat_each_grids_own_claims_table(tmp_path):
    """`report.py --claims`: each grid's row is the row of that grid's own report; a grid that is not
    in the store and a claim no grid tests are said, not dropped."""
    tracker = one_at_a_time(seeds=8, late_seeds=())
    frac, _ = fractional_store()
    tracker.runs += frac.runs                     # two grids in one store
    text = report.claims_across(tracker, ["dev", "frac", "absent"], command="python report.py --claims dev frac absent")
    assert f"From `{tracker.uri}`, experiment `{tracker.experiment}`" in text and "`python report.py --claims dev" in text
    for grid in ("dev", "frac"):
        md, _, _ = report.build(tracker, grid, tmp_path / f"{grid}.md")
        own = md.split("## The paper's claims at this scale")[1].split("\n## ")[0]
        measured = [line for line in own.splitlines() if line.startswith("| LRN") or line.startswith("| overlapping")]
        assert measured
        for line in measured:
            claim, claimed, *rest = line.split(" | ")
            row = next(r for r in text.splitlines() if r.startswith(claim + " | ") and f"`{grid}` (" in r)
            assert row.endswith(" | ".join(rest)) and f" | {claimed} | " in row
    assert "`abc1234` fp32, 8 seeds, 32/32 learned)" in text      # grid, commit, learned counts, complete
    assert "- `absent`: no runs of grid 'absent'" in text
    assert "- not measured by these grids: PCA lighting" in text


def test_simple_effects_of_an_interaction_recover_the_conditional_truth():
    """The synthetic fraction's init:lrn interaction (+1 point): lrn's effect is 0.5 with init at the
    paper's value and 1.5 at PyTorch's; init's is -3.5 and -2.5 with lrn on and off. The report
    shows them, and only for interactions whose interval excludes 0."""
    tracker, truth = fractional_store(sd=0.002)
    g = load(tracker, "frac")
    toggles = report.is_two_level(g)
    md, fx = report.factorial_section(g, toggles)
    fx = fx.set_index("term")
    strong = [t for t in fx.index if ":" in t and (fx.loc[t, "ci_low"] > 0 or fx.loc[t, "ci_high"] < 0)]
    assert "init:lrn" in strong
    ok = report.learned(report.coded(g, toggles))
    se = stats.simple_effects(ok, toggles, report.PRIMARY, ["init:lrn"]).set_index(["toggle", "level"])
    want = {("lrn", "paper"): truth["lrn"] - 0.005, ("lrn", "deviation"): truth["lrn"] + 0.005,
            ("init", "paper"): truth["init"] - 0.005, ("init", "deviation"): truth["init"] + 0.005}
    for key, value in want.items():   # within 3.3 standard errors (99.9%) of the truth, the SE from the interval
        r = se.loc[key]
        assert abs(r.effect - value) <= 3.3 * (r.ci_high - r.ci_low) / (2 * 1.96), key
    # main effect -/+ half the interaction, exactly (a linear contrast of the fit's estimates)
    assert se.loc[("lrn", "paper"), "effect"] == pytest.approx(fx.loc["lrn", "effect"] - fx.loc["init:lrn", "effect"] / 2)
    assert "Simple effects, for each two-way interaction" in md
    for t in strong:
        assert f"| `{t}` | `{t.split(':')[0]}` | `{t.split(':')[1]}` | paper |" in md
    assert md.count("| paper |") == 2 * len(strong)


def test_header_names_each_machine_kind_and_whether_a_seed_spans_two():
    """Cells trained on different CPU kinds are counted per kind in the report's header, with
    whether any seed's pairs are split across kinds."""
    tracker = one_at_a_time(seeds=4, late_seeds=())
    for run in tracker.runs:
        run.params.update(device="cpu", cpu="AVX2" if int(run.params["seed"]) < 2 else "AVX512_BF16")
    line = report.header(load(tracker, "dev"), tracker, "report.py").splitlines()[2]
    assert "devices cpu (AVX2): 8 runs, cpu (AVX512_BF16): 8 runs; each seed's cells on one kind" in line
    tracker.runs[0].params["cpu"] = "AVX512_BF16"          # seed 0's baseline on the other kind
    line = report.header(load(tracker, "dev"), tracker, "report.py").splitlines()[2]
    assert "cpu (AVX512_BF16): 9 runs" in line and "seeds with cells on more than one kind: 1" in line
    for run in tracker.runs:
        run.params["cpu"] = "AVX2"
    line = report.header(load(tracker, "dev"), tracker, "report.py").splitlines()[2]
    assert "device cpu (AVX2)," in line and "devices" not in line
