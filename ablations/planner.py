"""Plan before running: the seeds a grid needs to detect a target effect, from the noise the store
has already measured on the same profile.

Noise: the SD of a paired difference between two learned runs of one seed. From a one-at-a-time
grid, the pooled SD of its learned pairs' differences (each variant about its own mean; variants
whose runs equal the base's, zero spread, are left out); from a
two-level factorial, sqrt(2) x the residual SD of its blocked fit (two independent runs). The SD's
95% chi-square interval turns into a range of seeds.
Failures: the share of pairs in which both runs learned (or, from a factorial, the learned share
squared) divides the learned pairs needed into seeds to launch.
Test: the primary analysis's paired t-test at Holm's first step, alpha / m for m variants
(conservative for all but the first), 80% power; for a factorial target, the replicates that
give each main effect that power, and those that bring its 95% half-width under a target, with the
fit's parameters and HC3 counted (stats.factorial_replicates).
"""
from __future__ import annotations

import math

import numpy as np

from . import stats
from .report import CLAIMS, coded, is_two_level, learned, primary_effects, table
from .runs import GridRuns

MIN_DF = 5   # below this the SD's interval spans a factor of 5 or more: no plan


def noise(g: GridRuns) -> dict:
    """{'sd', 'df', 'both_learned', 'source'} from the grid's learned runs."""
    toggles = is_two_level(g)
    if toggles:
        data = coded(g, toggles)
        ok = data[data["outcome"] == "learned"].dropna(subset=["val10_top1_err"])
        k = len(toggles)
        params = 1 + k + k * (k - 1) // 2 + ok["seed"].nunique() - 1
        if len(ok) <= params:
            return {"sd": math.nan, "df": 0, "both_learned": math.nan, "source": "too few learned runs to fit"}
        import statsmodels.formula.api as smf
        frame = ok.assign(block=ok["seed"].astype(str))
        terms = toggles + [f"{a}:{b}" for i, a in enumerate(toggles) for b in toggles[i + 1:]]
        fit = smf.ols("val10_top1_err ~ " + " + ".join(terms) + (" + C(block)" if frame["block"].nunique() > 1 else ""),
                      data=frame).fit()
        share = len(learned(g.cells)) / len(g.cells)
        return {"sd": math.sqrt(2 * fit.scale), "df": int(fit.df_resid), "both_learned": share ** 2,
                "source": f"sqrt(2) x residual SD of {len(ok)} learned runs (blocked factorial fit)"}
    fam = primary_effects(g)
    groups = [np.array(e.diffs) for e in fam.values() if e.estimable]   # a variant identical to its base adds no noise
    sd, df = stats.pooled_sd(groups)
    pairs = sum(e.n + e.dropped for e in fam.values())
    both = sum(e.n for e in fam.values()) / pairs if pairs else math.nan
    return {"sd": sd, "df": df, "both_learned": both,
            "source": f"pooled SD of {sum(len(x) for x in groups)} learned pairs over {len(groups)} variants"}


def plan(g: GridRuns, target_variants: int, target_design: str, effects: dict[str, float],
         half_width: float = 0.01, factors: int = 0) -> str:
    """Markdown: seeds (one-at-a-time) or replicates (factorial: target_design is its cells a
    replicate, `factors` the toggles it varies) to launch per target effect."""
    n = noise(g)
    lines = [f"# Plan from grid `{g.grid}` on `{g.profile}` ({len(g.cells)} finished cells)", "",
             f"- noise: {n['source']}"]
    if not n["df"] or n["df"] < MIN_DF or not (n["sd"] > 0):
        return "\n".join(lines + [f"- **too few runs to plan from** ({n['df']} degrees of freedom; at least {MIN_DF} "
                                  f"needed): run more seeds of `{g.grid}` first", ""])
    lo, hi = stats.sd_interval(n["sd"], n["df"])
    rate = n["both_learned"]
    lines += [f"- SD of a paired difference: {100 * n['sd']:.2f} points, 95% interval [{100 * lo:.2f}, "
              f"{100 * hi:.2f}] ({n['df']} df)",
              f"- pairs in which both runs learned: {100 * rate:.0f}% (seeds are divided by this)", ""]
    if target_design == "paired":
        alpha = stats.ALPHA / target_variants
        lines += [f"Target: a one-at-a-time grid of {target_variants} variants against its base; paired t-test at "
                  f"Holm's first step, alpha = 0.05/{target_variants} = {alpha:.4f}, power {stats.POWER:.0%}.", ""]
        rows = []
        for name, effect in effects.items():
            need = [stats.pairs_needed(effect, s, alpha) for s in (n["sd"], lo, hi)]
            seeds = [math.ceil(x / rate) if x and rate > 0 else None for x in need]
            rows.append([name, f"{100 * effect:.2f}", need[0], f"{need[1]}–{need[2]}", seeds[0], f"{seeds[1]}–{seeds[2]}"])
        return "\n".join(lines + [table(["effect", "points", "learned pairs", "pairs, SD range", "seeds to launch",
                                         "seeds, SD range"], rows), ""])
    cells = int(target_design)
    sd_run = n["sd"] / math.sqrt(2)
    learned_share = math.sqrt(rate)
    lines += [f"Target: a two-level design of {cells} cells a replicate over {factors} toggles, fitted with main "
              f"effects, two-way interactions and a block per replicate (HC3); a main effect's SE is 2 x SD(run) / "
              f"sqrt(learned runs), widened by HC3 by 1 / sqrt(1 - parameters / runs); normal quantiles, as the fit's "
              f"HC3 intervals; 95% intervals, power {stats.POWER:.0%} at alpha 0.05.", ""]
    rows = []
    for name, effect in list(effects.items()) + [(f"95% half-width <= {100 * half_width:.1f}", None)]:
        reps = [stats.factorial_replicates(s, cells, factors, learned_share, effect=effect,
                                           half_width=None if effect else half_width)
                for s in (sd_run, lo / math.sqrt(2), hi / math.sqrt(2))]
        rows.append([name, f"{100 * effect:.2f}" if effect else "–", reps[0], f"{reps[1]}–{reps[2]}"])
    return "\n".join(lines + [table(["target", "points", "replicates (seeds)", "replicates, SD range"], rows), ""])


def claimed_effects() -> dict[str, float]:
    return {text.split(":")[0]: abs(claimed) for text, _, claimed in CLAIMS}
