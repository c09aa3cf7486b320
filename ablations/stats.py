"""Statistics for ablation reports, declared before any data is seen (README: Statistics).

Primary analysis, one per grid, on `val10_top1_err`:
- effect of a variant: the paired difference (variant - base, same seed) over the seeds where
  both runs *learned* (core/outcomes.py; late starts, chance and diverged runs are counted, not
  averaged in);
- test: the paired t-test, the same procedure at every n (its p-value is continuous, so a Holm
  verdict is possible from 5 pairs on; rank tests cannot reach p < 0.05/6 below 8-9 pairs);
- family: the variants of the grid, Holm step-down; each effect's interval is taken at the level
  of the Holm step that decided it (1 - alpha/(m - i + 1) for the i-th smallest p while the
  step-down rejects, then the level it stopped at), so an interval excludes 0 exactly when the
  verdict is resolved and the claims table, which shows the same interval, cannot disagree;
- verdict words only from MIN_PAIRS pairs ("too few seeds" below), "not estimable" for zero spread;
- sensitivity: the Hodges-Lehmann estimate (median of the Walsh averages) with its exact
  signed-rank interval at the same level.
Secondary metrics are described (mean and SD of the differences), without tests or verdicts.
Factorials: least squares with seed as a block, main effects and two-way interactions, HC3
standard errors, on learned runs only (the exclusion counted per level).
scipy and statsmodels do the distributions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.power import TTestPower
from statsmodels.stats.proportion import proportion_confint

ALPHA = 0.05
POWER = 0.8
MIN_PAIRS = 5


@dataclass(frozen=True)
class Effect:
    """Paired difference (variant - base) over learned pairs, in error-rate fractions."""
    n: int                         # pairs used (both runs learned)
    dropped: int                   # pairs with a run that did not learn
    mean: float
    sd: float
    p: float = math.nan            # paired t-test, two-sided
    p_holm: float = math.nan
    level: float = 1 - ALPHA       # confidence level of `ci` (family-wise, from the Holm step)
    ci: tuple[float, float] = (math.nan, math.nan)
    hl: float = math.nan           # Hodges-Lehmann estimate and interval at the same level
    hl_ci: tuple[float, float] = (math.nan, math.nan)
    diffs: tuple[float, ...] = ()

    @property
    def estimable(self) -> bool:
        return self.n >= 2 and self.sd > 0


def paired(diffs, dropped: int = 0) -> Effect:
    """The effect of one variant from its learned-pair differences (before the family step)."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    p = float(stats.ttest_1samp(d, 0.0).pvalue) if n > 1 and sd > 0 else math.nan
    return Effect(n, dropped, mean, sd, p, diffs=tuple(d))


def t_interval(e: Effect, level: float) -> tuple[float, float]:
    if not e.estimable:
        return (math.nan, math.nan)
    half = stats.t.ppf(0.5 + level / 2, e.n - 1) * e.sd / math.sqrt(e.n)
    return (e.mean - half, e.mean + half)


def signed_rank_counts(n: int) -> np.ndarray:
    """Number of sign patterns of ranks 1..n giving each positive-rank sum 0..n(n+1)/2 (exact)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
    return counts


def hodges_lehmann(diffs, level: float) -> tuple[float, tuple[float, float]]:
    """Median of the Walsh averages (d_i + d_j) / 2, i <= j, and its distribution-free interval:
    the k-th smallest and k-th largest Walsh averages, k from the exact signed-rank distribution."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n < 2:
        return math.nan, (math.nan, math.nan)
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2)
    est = float(np.median(walsh))
    cdf = np.cumsum(signed_rank_counts(n)) / 2.0 ** n
    # largest c with P(W <= c - 1) <= (1 - level) / 2; the interval is walsh[c-1], walsh[M-c]
    c = int(np.searchsorted(cdf, (1 - level) / 2, side="right"))
    if c < 1:
        return est, (math.nan, math.nan)   # too few pairs for any interval at this level
    return est, (float(walsh[c - 1]), float(walsh[len(walsh) - c]))


def family(effects: dict[str, Effect], alpha: float = ALPHA) -> dict[str, Effect]:
    """Holm step-down over the testable effects; intervals at the level of the deciding step."""
    testable = sorted((e.p, k) for k, e in effects.items() if not math.isnan(e.p))
    m = len(testable)
    out = dict(effects)
    running, stopped_at = 0.0, None
    for i, (p, k) in enumerate(testable):
        running = max(running, min(1.0, (m - i) * p))
        step_alpha = alpha / (m - i)
        if stopped_at is None and p > step_alpha:
            stopped_at = step_alpha
        level = 1 - (stopped_at if stopped_at is not None else step_alpha)
        out[k] = replace(effects[k], p_holm=running, level=level)
    for k, e in out.items():
        level = e.level if not math.isnan(e.p) else 1 - alpha / max(m, 1)
        hl, hl_ci = hodges_lehmann(e.diffs, level)
        out[k] = replace(e, level=level, ci=t_interval(e, level), hl=hl, hl_ci=hl_ci)
    return out


def verdict(e: Effect, alpha: float = ALPHA) -> str:
    """For the deviation: 'hurts' (error up) / 'helps' / 'not resolved'; no words below MIN_PAIRS."""
    if e.n < MIN_PAIRS:
        return f"too few seeds ({e.n} learned pairs; verdicts from {MIN_PAIRS})"
    if not e.estimable:
        return "not estimable (no spread)"
    if e.p_holm < alpha:
        return "hurts" if e.mean > 0 else "helps"
    return "not resolved"


def claim_status(e: Effect, claimed: float) -> str:
    """A claim that the deviation changes error by `claimed` (signed): judged on the same
    family-wise interval as the verdict, so the two tables agree."""
    v = verdict(e)
    if v not in ("hurts", "helps", "not resolved"):
        return v
    lo, hi = e.ci
    size = "claimed size inside the interval" if lo <= claimed <= hi else "claimed size outside the interval"
    if v == "not resolved":
        return f"not resolved; {size}"
    same_direction = (e.mean > 0) == (claimed > 0)
    return f"{'reproduced (direction)' if same_direction else 'contradicted'}; {size}"


def clopper_pearson(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    lo, hi = proportion_confint(k, n, alpha=alpha, method="beta")
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------- planning
def pooled_sd(groups: list[np.ndarray]) -> tuple[float, int]:
    """Pooled SD of several groups of paired differences (each about its own mean) and its df."""
    ss = sum(float(((g - g.mean()) ** 2).sum()) for g in groups if len(g) > 1)
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    return (math.sqrt(ss / df) if df else math.nan), df


def sd_interval(sd: float, df: int, level: float = 1 - ALPHA) -> tuple[float, float]:
    """Chi-square interval for a standard deviation estimated with df degrees of freedom."""
    lo = sd * math.sqrt(df / stats.chi2.ppf(0.5 + level / 2, df))
    hi = sd * math.sqrt(df / stats.chi2.ppf(0.5 - level / 2, df))
    return lo, hi


def pairs_needed(effect: float, sd: float, alpha: float, power: float = POWER) -> int | None:
    """Learned pairs a two-sided paired t-test at `alpha` needs to detect `effect` with `power`."""
    if not (sd > 0) or effect == 0 or math.isnan(effect):
        return None
    n = TTestPower().solve_power(effect_size=abs(effect) / sd, alpha=alpha, power=power, alternative="two-sided")
    return max(2, math.ceil(n))


def detectable(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest effect a paired t-test with n pairs detects with `power` at `alpha`."""
    if not (sd > 0) or n < 2:
        return math.nan
    return sd * TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided")


def detectable_from_interval(ci: tuple[float, float], level: float = 1 - ALPHA, power: float = POWER) -> float:
    """The smallest effect a normal-theory interval of this width (a factorial main effect's HC3
    interval) detects with `power`: (z_level + z_power) x its standard error."""
    z = stats.norm.ppf(0.5 + level / 2)
    return (ci[1] - ci[0]) / 2 / z * (z + stats.norm.ppf(power))


# ------------------------------------------------------------------------------------ factorial
def factorial_replicates(sd_run: float, cells: int, factors: int, learned_share: float, effect: float | None = None,
                         half_width: float | None = None, alpha: float = ALPHA, power: float = POWER,
                         most: int = 1000) -> int | None:
    """Replicates of a two-level design (`cells` a replicate, `factors` toggles) after which the
    factorial fit (main effects, two-way interactions, a block per replicate; HC3) gives a main
    effect a 95% half-width of at most `half_width`, or detects `effect` with `power` at `alpha`.
    With n learned runs and p parameters, a main effect's SE is 2 sd / sqrt(n), widened by HC3's
    average 1 / sqrt(1 - p/n) on a balanced design (each squared residual divided by (1 - h)^2, h =
    p/n); normal quantiles, as factorial_fit's HC3 intervals use. None when `most` do not suffice."""
    if not (sd_run > 0) or not (learned_share > 0):
        return None
    for reps in range(1, most + 1):
        n = cells * reps * learned_share
        p = 1 + factors + factors * (factors - 1) // 2 + reps - 1
        if n - p < 1:
            continue
        se = 2 * sd_run / math.sqrt(n) / math.sqrt(1 - p / n)
        z = stats.norm.ppf(1 - alpha / 2)
        if half_width is not None and z * se <= half_width:
            return reps
        if effect and (z + stats.norm.ppf(power)) * se <= abs(effect):
            return reps
    return None


def _factorial_ols(df: pd.DataFrame, factors: list[str], response: str, block: str | None):
    import statsmodels.formula.api as smf
    data = pd.DataFrame({f: df[f].astype(float).values - 0.5 for f in factors})
    data["y"] = df[response].astype(float).values
    terms = factors + [f"{a}:{b}" for i, a in enumerate(factors) for b in factors[i + 1:]]
    formula = "y ~ " + " + ".join(terms)
    if block and df[block].nunique() > 1:
        data["block"] = df[block].astype(str).values
        formula += " + C(block)"
    return smf.ols(formula, data=data).fit(cov_type="HC3"), terms


def factorial_fit(df: pd.DataFrame, factors: list[str], response: str, block: str | None = "seed") -> pd.DataFrame:
    """Main effects and two-way interactions of a two-level design (full or fractional) by least
    squares, seed as a block, HC3 standard errors. Factors coded -1/2 (paper) and +1/2 (deviation):
    a main effect is the mean difference deviation - paper; an interaction the difference of
    differences. Terms the data cannot separate get nan."""
    fit, terms = _factorial_ols(df, factors, response, block)
    ci = fit.conf_int(ALPHA)
    rows = []
    for t in terms:
        ok = t in fit.params and np.isfinite(fit.bse[t]) and fit.df_resid > 0
        rows.append({"term": t, "effect": fit.params[t] if ok else math.nan,
                     "ci_low": ci.loc[t, 0] if ok else math.nan, "ci_high": ci.loc[t, 1] if ok else math.nan,
                     "p": fit.pvalues[t] if ok else math.nan})
    out = pd.DataFrame(rows)
    out.attrs.update(n=int(fit.nobs), df_resid=float(fit.df_resid))
    return out


def simple_effects(df: pd.DataFrame, factors: list[str], response: str, interactions: list[str],
                   block: str | None = "seed") -> pd.DataFrame:
    """For each interaction "a:b" of the same fit as factorial_fit: the effect of a with b at the
    paper's value and at the deviation (main effect -/+ half the interaction), and the same for b,
    each with its 95% interval from the fit's HC3 covariance (a linear contrast of two estimates)."""
    fit, _ = _factorial_ols(df, factors, response, block)
    names = list(fit.params.index)
    rows = []
    for term in interactions:
        a, b = term.split(":")
        for toggle, other in ((a, b), (b, a)):
            for level, sign in (("paper", -0.5), ("deviation", 0.5)):
                contrast = np.zeros(len(names))
                contrast[names.index(toggle)], contrast[names.index(term)] = 1.0, sign
                res = fit.t_test(contrast)
                lo, hi = np.asarray(res.conf_int(ALPHA)).ravel()
                rows.append({"interaction": term, "toggle": toggle, "given": other, "level": level,
                             "effect": float(np.asarray(res.effect).ravel()[0]), "ci_low": float(lo),
                             "ci_high": float(hi), "p": float(np.asarray(res.pvalue).ravel()[0])})
    return pd.DataFrame(rows)
