"""Grid designs: expand a grid of experiments.yaml into named variants (one Toggles each).

A grid is a mapping with any of:
    base:            toggle overrides every variant starts from (default: the paper baseline)
    base_name:       the name of that starting variant (default "baseline")
    one_at_a_time:   {toggle: value}: the base plus one variant per toggle, flipped alone
    factorial:       {toggle: [values]}: every combination (the full product)
    fraction:        {toggle: [paper-side, deviation-side]} for k two-level toggles: the half of the
                     2^k product with an even number of toggles on their second level (defining
                     relation I = AB...K: resolution k, so for k = 6 main effects and two-way
                     interactions are aliased only with four- and five-way interactions)
    variants:        {name: overrides}: explicit extra variants on top of the base
    description:     free text
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from core.config import ConfigError, Experiments, check_combination
from core.toggles import Toggles, as_dict, make_toggles

GRID_KEYS = {"base", "base_name", "one_at_a_time", "factorial", "fraction", "variants", "description"}


@dataclass(frozen=True)
class Variant:
    name: str
    toggles: Toggles


def _toggles(overrides: dict, where: str) -> Toggles:
    t = make_toggles(overrides, where)
    check_combination(t)
    return t


def expand(experiments: Experiments, grid: str) -> list[Variant]:
    if grid not in experiments.grids:
        raise ConfigError(f"unknown grid {grid!r}; choices: {', '.join(experiments.grids)} (see {experiments.path})")
    spec = experiments.grids[grid]
    where = f"grids.{grid}"
    if not isinstance(spec, dict) or set(spec) - GRID_KEYS:
        bad = sorted(set(spec) - GRID_KEYS) if isinstance(spec, dict) else spec
        raise ConfigError(f"{where}: unknown key(s) {bad}; valid keys: {', '.join(sorted(GRID_KEYS))}")
    base = {**as_dict(experiments.baseline), **(spec.get("base") or {})}
    base_name = spec.get("base_name", "baseline")
    variants = [Variant(base_name, _toggles(base, f"{where}.base"))]
    for name, value in (spec.get("one_at_a_time") or {}).items():
        variants.append(Variant(f"{name}={_fmt(value)}", _toggles({**base, name: value}, f"{where}.one_at_a_time")))
    factorial, fraction = spec.get("factorial") or {}, spec.get("fraction") or {}
    if factorial and fraction:
        raise ConfigError(f"{where}: use either factorial or fraction, not both")
    if fraction and not all(isinstance(v, list) and len(v) == 2 for v in fraction.values()):
        raise ConfigError(f"{where}.fraction: each toggle needs a list of exactly two values")
    if fraction and len(fraction) < 3:
        raise ConfigError(f"{where}.fraction: a half fraction needs at least 3 toggles")
    if factorial or fraction:
        design = factorial or fraction
        if not all(isinstance(v, list) and v for v in design.values()):
            raise ConfigError(f"{where}.factorial: each toggle needs a non-empty list of values")
        variants = []   # the product includes the base cell itself
        for combo in itertools.product(*design.values()):
            if fraction and sum(v == levels[1] for v, levels in zip(combo, design.values())) % 2:
                continue
            flips = dict(zip(design, combo))
            t = _toggles({**base, **flips}, f"{where}.factorial")
            diff = [f"{k}={_fmt(v)}" for k, v in flips.items() if v != base.get(k)]
            variants.append(Variant(",".join(diff) or base_name, t))
    for name, overrides in (spec.get("variants") or {}).items():
        variants.append(Variant(str(name), _toggles({**base, **(overrides or {})}, f"{where}.variants.{name}")))
    seen = set()
    for v in variants:
        if v.name in seen:
            raise ConfigError(f"{where}: variant name {v.name!r} appears twice")
        seen.add(v.name)
    return variants


def _fmt(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
