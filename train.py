#!/usr/bin/env python
"""Train exactly one configuration: a profile, toggle values and profile fields changed on the
command line or in a YAML file, one seed. Logged under the same MLflow contract as a grid cell
(a parent run of grid `single` and one child), and resumed the same way: the same command skips a
configuration that already has a FINISHED run.

    python train.py --profile smoke --set lrn=false --set lr=0.02
    python train.py -c my-run.yaml                      # keys: profile, seed, and any toggle or profile field
    python train.py --profile cpu --seed 3 --set init=pytorch --tracking-uri sqlite:///results/mlflow.db

A YAML file and --set take the same keys (a toggle name such as `lrn`, or a profile field such as
`lr` or `epoch_scale`; `profile.momentum` is the SGD momentum, `momentum` the toggle); --set wins.
Values are read as YAML (`false`, `0.02`, `[5, 2, 1]`).
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import yaml

from core.config import REPO, ConfigError, Experiments, Profile, _Loader, _typed, load_experiments
from core.toggles import REGISTRY, as_dict, make_toggles
from core.tracking import DEFAULT_EXPERIMENT

GRID = "single"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--run-config", help="YAML file: profile, seed, toggles and profile fields")
    ap.add_argument("--profile", help="profile from experiments.yaml (default: the file's, else demo)")
    ap.add_argument("--seed", type=int, help="seed (default: the file's, else 0)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a toggle or profile field (repeatable)")
    ap.add_argument("--data-root", help="ImageFolder root with train/ and val/, or hf:<name or folder>")
    ap.add_argument("--cache-dir", help="uint8 cache folder")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI")
    ap.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    ap.add_argument("--config", default=str(REPO / "experiments.yaml"), help="experiments file (profiles)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: CUDA when available)")
    return ap


def settings(args) -> dict:
    """The run's keys from the YAML file, then --set on top."""
    out = {}
    if args.run_config:
        path = Path(args.run_config)
        if not path.is_file():
            raise ConfigError(f"{path} not found; pass -c FILE with the run's keys")
        try:
            data = yaml.load(path.read_text(), Loader=_Loader) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}".replace("\n", " ")) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must be a mapping of keys (profile, seed, toggles, profile fields) to values")
        out.update(data)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set lrn=false")
        out[key.strip()] = yaml.load(value, Loader=_Loader)
    return out


def single(experiments: Experiments, keys: dict, profile: str | None, seed: int | None):
    """(experiments holding one grid of one variant, profile name, seed), every key checked."""
    keys = dict(keys)
    profile = profile or keys.pop("profile", None) or "demo"
    file_seed = keys.pop("seed", 0)
    keys.pop("profile", None)
    seed = file_seed if seed is None else seed
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a whole number >= 0, got {seed!r}")
    base = experiments.profile(profile)
    fields = {f.name for f in dataclasses.fields(Profile)} - {"name"}
    # a key names a toggle, else a profile field; `profile.KEY` names the field where both exist (momentum)
    toggles = {k: v for k, v in keys.items() if k in REGISTRY}
    changes = {k.removeprefix("profile."): v for k, v in keys.items() if k not in REGISTRY}
    unknown = set(changes) - fields
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)}; toggles: {', '.join(REGISTRY)}; "
                          f"profile fields: {', '.join(sorted(fields))} (profile.momentum for the SGD momentum)")
    make_toggles({**as_dict(experiments.baseline), **toggles}, "the run's toggles")
    typed = _typed(Profile, changes, "the run's profile fields")
    name = profile + ("+" + ",".join(f"{k}={v}" for k, v in sorted(changes.items())) if changes else "")
    prof = dataclasses.replace(base, name=name, **typed)
    variant = ",".join(f"{k}={v}" for k, v in toggles.items()) or "baseline"
    grids = {GRID: {"base": toggles, "base_name": variant}}
    return dataclasses.replace(experiments, profiles={name: prof}, grids=grids), name, seed


def main(argv=None) -> int:
    import run_ablation
    args = parser().parse_args(argv)
    try:
        experiments, profile, seed = single(load_experiments(args.config), settings(args), args.profile, args.seed)
    except ConfigError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    ns = run_ablation.parser().parse_args(["--grid", GRID, "--profile", profile, "--seeds", "1",
                                           "--first-seed", str(seed), "--experiment", args.experiment,
                                           "--device", args.device])
    ns.data_root, ns.cache_dir, ns.tracking_uri = args.data_root, args.cache_dir, args.tracking_uri
    ns.command = shlex.join(["python", *sys.argv])
    return run_ablation.interruptible(lambda: run_ablation.run(ns, experiments))


if __name__ == "__main__":
    sys.exit(main())
