"""Statistics for ablation reports: paired effects with intervals and tests, Holm correction,
power, factorial effects. scipy and statsmodels do the distributions; nothing is hand-rolled."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

ALPHA = 0.05
POWER = 0.8
BOOTSTRAP_MIN_N = 10   # below this a bootstrap interval is unreliable; use the t-interval


@dataclass(frozen=True)
class Effect:
    """Paired difference (variant - baseline) over seeds, in error-rate points (fractions)."""
    n: int
    mean: float
    std: float
    ci: tuple[float, float]
    ci_method: str
    p_t: float                   # paired t-test
    p_wilcoxon: float | None     # Wilcoxon signed-rank, when n >= 6
    p_holm: float = math.nan     # the test used, Holm-corrected across the family
    seeds_needed: int | None = None

    @property
    def p(self) -> float:
        return self.p_wilcoxon if self.p_wilcoxon is not None else self.p_t


def paired_effect(diffs: np.ndarray, seed: int = 0) -> Effect:
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    std = float(d.std(ddof=1)) if n > 1 else math.nan
    if n < 2:
        return Effect(n, mean, std, (math.nan, math.nan), "none", math.nan, None)
    if std == 0:
        ci, method = (mean, mean), "exact (no spread)"
        p_t = 0.0 if mean != 0 else 1.0
    else:
        p_t = float(stats.ttest_1samp(d, 0.0).pvalue)
        if n >= BOOTSTRAP_MIN_N:
            res = stats.bootstrap((d,), np.mean, confidence_level=1 - ALPHA, method="BCa",
                                  rng=np.random.default_rng(seed))
            ci, method = (float(res.confidence_interval.low), float(res.confidence_interval.high)), "bootstrap BCa"
        else:
            ci = stats.t.interval(1 - ALPHA, n - 1, loc=mean, scale=std / math.sqrt(n))
            ci, method = (float(ci[0]), float(ci[1])), "t"
    p_w = float(stats.wilcoxon(d).pvalue) if n >= 6 and np.any(d != 0) else None
    return Effect(n, mean, std, ci, method, p_t, p_w, seeds_needed=seeds_for(mean, std))


def seeds_for(mean: float, std: float, most: int = 10000) -> int | None:
    """Seeds a paired t-test needs to detect an effect of this size (alpha 0.05, power 0.8):
    the smallest n whose power (statsmodels TTestPower) reaches 0.8; None if beyond `most`."""
    if not (std > 0) or mean == 0 or math.isnan(mean):
        return None
    n = np.arange(2, most + 1)
    power = TTestPower().power(effect_size=abs(mean) / std, nobs=n, alpha=ALPHA, alternative="two-sided")
    hit = np.flatnonzero(power >= POWER)
    return int(n[hit[0]]) if len(hit) else None


def holm(effects: dict[str, Effect]) -> dict[str, Effect]:
    """Holm-correct the p-values of a family of effects (those with a p-value)."""
    names = [k for k, e in effects.items() if not math.isnan(e.p)]
    if not names:
        return effects
    adjusted = multipletests([effects[k].p for k in names], alpha=ALPHA, method="holm")[1]
    out = dict(effects)
    for k, p in zip(names, adjusted):
        e = effects[k]
        out[k] = Effect(e.n, e.mean, e.std, e.ci, e.ci_method, e.p_t, e.p_wilcoxon, float(p), e.seeds_needed)
    return out


def verdict(e: Effect) -> str:
    """'hurts' / 'helps' for the deviation (error up / down), else not resolved with the seeds needed."""
    if e.n >= 2 and e.p_holm < ALPHA:
        return "hurts" if e.mean > 0 else "helps"
    more = f"; ~{e.seeds_needed} seeds would resolve an effect this size" if e.seeds_needed else ""
    return f"not resolved at n={e.n}{more}"


def claim_status(e: Effect, claimed: float) -> str:
    """A claim that the deviation raises error by `claimed` (> 0): reproduced when the interval lies
    above 0, contradicted when it lies below, else not resolved; says whether the claimed size fits."""
    lo, hi = e.ci
    if math.isnan(lo):
        return "not resolved (fewer than 2 seeds)"
    size = "claimed size inside the interval" if lo <= claimed <= hi else "claimed size outside the interval"
    if lo > 0:
        return f"reproduced (direction); {size}"
    if hi < 0:
        return f"contradicted; {size}"
    return f"not resolved; {size}"


def factorial_effects(df: pd.DataFrame, factors: list[str], response: str) -> pd.DataFrame:
    """Main effects and two-way interactions of a two-level design by least squares (statsmodels
    OLS), factors coded -1/2 (paper) and +1/2 (deviation): a main effect's coefficient is the mean
    difference deviation - paper; an interaction's is the difference of differences."""
    import statsmodels.formula.api as smf
    data = pd.DataFrame({f: df[f].astype(float) - 0.5 for f in factors})
    data["y"] = df[response].astype(float).values
    terms = factors + [f"{a}:{b}" for i, a in enumerate(factors) for b in factors[i + 1:]]
    fit = smf.ols("y ~ " + " + ".join(terms), data=data).fit()
    ci = fit.conf_int(ALPHA)
    rows = [{"term": t, "effect": fit.params[t],
             "ci_low": ci.loc[t, 0], "ci_high": ci.loc[t, 1], "p": fit.pvalues[t]} for t in terms]
    return pd.DataFrame(rows)
