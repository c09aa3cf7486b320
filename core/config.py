"""Typed, immutable configuration loaded from experiments.yaml.

A `RunConfig` is one training run: a `Profile` (scale: data, size, width, budget), the `Toggles`
(core/toggles.py) and a seed. Derived values (epochs, crop sizes, patience) are computed here,
never written back. Unknown keys and bad values are refused with the valid choices named.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .toggles import Toggles, as_dict, make_toggles

REPO = Path(__file__).resolve().parent.parent   # the repository (default data and experiments paths)
PAPER_EPOCHS = {"paper": 90, "seed": 120}   # §5; the seed trained 120
PAPER_PATIENCE_AT_90 = 10                   # epochs without improvement before an lr drop, at 90 epochs
DATASET_CLASSES = {"imagenette": 10, "imagenet": 1000}
PRECISIONS = ("auto", "fp32", "bf16")       # auto: bf16 where the device computes it natively

# Profile keys left out of config_hash: they change speed or wording, not what is computed.
# (precision is in: a run's hash holds the precision it resolved to on its machine.)
SPEED_ONLY = ("description", "eval_batch_size", "compile", "channels_last", "input")
INPUTS = ("auto", "memory", "stream")       # where training batches are read from (core/stream.py)


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str = "imagenette"
    image_size: int = 224               # training crop (paper: 224)
    width: float = 1.0                  # channel multiplier
    stem: tuple[int, int, int] = (11, 4, 2)   # conv1 kernel, stride, padding
    batch_size: int = 128               # §5
    lr: float = 0.01                    # §5 (a profile may scale lr with batch; both logged)
    momentum: float = 0.9               # §5
    weight_decay: float = 5e-4          # §5
    epoch_scale: float = 1.0            # multiplies the 90 / 120 epochs
    max_per_class: int | None = None    # subset of each class (smoke runs)
    eval_batch_size: int = 256
    channels_last: bool = True          # memory format (README speed table: never slower, up to 1.7x faster)
    precision: str = "auto"             # "auto" | "fp32" | "bf16" (autocast); auto: resolved per device
    compile: bool = False               # torch.compile the model (pays off on GPUs; README speed table)
    input: str = "auto"                 # "auto" | "memory" | "stream": batches from the cache in memory or from disk
    description: str = ""

    def __post_init__(self):
        where = f"profiles.{self.name}"
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{where}.precision {self.precision!r} unknown; choices: {', '.join(PRECISIONS)}")
        if self.input not in INPUTS:
            raise ConfigError(f"{where}.input {self.input!r} unknown; choices: {', '.join(INPUTS)}")
        if self.dataset not in DATASET_CLASSES:
            raise ConfigError(f"{where}.dataset {self.dataset!r} unknown; choices: {', '.join(DATASET_CLASSES)}")
        for z in (2, 3):   # both pooling toggles must leave the last pooling at least 3x3 maps
            if pooled_sizes(self.image_size, self.stem, z)[2] < 3:
                raise ConfigError(f"{where}: image_size {self.image_size} with stem {list(self.stem)} leaves maps "
                                  f"smaller than 3x3 before the last pooling; use a larger image_size or a "
                                  f"smaller stem stride")

    @property
    def prep_size(self) -> int:
        """Side of the preprocessed image: 256 for 224 px crops (§2), scaled with the profile."""
        return round(256 * self.image_size / 224)

    @property
    def num_classes(self) -> int:
        return DATASET_CLASSES[self.dataset]

    def epochs(self, choice: str) -> int:
        return max(1, round(PAPER_EPOCHS[choice] * self.epoch_scale))


def pooled_sizes(image_size: int, stem: tuple[int, int, int], z: int) -> list[int]:
    """Spatial size after conv1, pool1, pool2 and pool3 (pools of size z, stride 2)."""
    k, s, p = stem
    pool = lambda n: (n - z) // 2 + 1
    c1 = (image_size + 2 * p - k) // s + 1
    return [c1, pool(c1), pool(pool(c1)), pool(pool(pool(c1)))]


@dataclass(frozen=True)
class RunConfig:
    """One run. `data`: the digest of the dataset it trains on (classes, split sizes, files), so a
    different dataset is a different run; `commit`: the code's commit where identity is strict."""
    profile: Profile
    toggles: Toggles = field(default_factory=Toggles)
    seed: int = 0
    data: str = ""
    commit: str = ""

    def __post_init__(self):
        check_combination(self.toggles)

    @property
    def epochs(self) -> int:
        return self.profile.epochs(self.toggles.epochs)

    @property
    def patience(self) -> int:
        """Patience of both lr schedules in epochs: 10 at the paper's 90 epochs, times the profile's
        epoch_scale; the `epochs` toggle leaves it alone (it changes only the number of epochs)."""
        return max(1, round(PAPER_PATIENCE_AT_90 * self.profile.epoch_scale))

    def resolved(self) -> dict[str, Any]:
        """Everything that determines the run, plus derived values: saved as config.yaml."""
        prof = dataclasses.asdict(self.profile)
        prof["stem"] = list(self.profile.stem)
        out = {"seed": self.seed, "toggles": as_dict(self.toggles), "profile": prof, "data": self.data,
               "derived": {"epochs_run": self.epochs, "prep_size": self.profile.prep_size,
                           "lr_patience": self.patience}}
        if self.commit:
            out["commit"] = self.commit
        return out

    def hash(self) -> str:
        """Stable hash of the resolved config and seed. Leaves out the settings that only change
        speed or wording, not what is computed (SPEED_ONLY), so they can change without a rerun."""
        data = self.resolved()
        for key in SPEED_ONLY:
            data["profile"].pop(key, None)
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def check_combination(t: Toggles) -> None:
    if t.output_bias != "paper" and t.init == "pytorch":
        raise ConfigError("toggle output_bias='seed' only applies to the paper init (init: paper or "
                          "paper_literal); with init: pytorch leave output_bias at 'paper'")


def _typed(cls, data: dict, where: str):
    """Check each key against the dataclass field's declared type (bool is not an int here)."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in {where}; valid keys: {', '.join(n for n in names if n != 'name')}")
    out = {}
    for key, value in data.items():
        kind = str(names[key].type)
        is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
        if kind.startswith("tuple"):
            if not (isinstance(value, list) and len(value) == 3 and all(is_int(v) for v in value)):
                raise ConfigError(f"{where}.{key} must be [kernel, stride, padding] integers, got {value!r}")
            value = tuple(value)
        elif kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
        elif kind.startswith("int") and not (is_int(value) and value >= 1 or (value is None and "None" in kind)):
            raise ConfigError(f"{where}.{key} must be a positive integer{' or null' if 'None' in kind else ''}, got {value!r}")
        elif kind == "float":
            zero_ok = key in ("momentum", "weight_decay")
            if not (is_int(value) or isinstance(value, float)) or value < 0 or (value == 0 and not zero_ok):
                raise ConfigError(f"{where}.{key} must be a {'non-negative' if zero_ok else 'positive'} number, got {value!r}")
            value = float(value)
        elif kind == "str" and not isinstance(value, str):
            raise ConfigError(f"{where}.{key} must be a string, got {value!r}")
        out[key] = value
    return out


def make_profile(name: str, data: dict) -> Profile:
    if not isinstance(data, dict):
        raise ConfigError(f"profile {name!r} must be a mapping of keys to values")
    return Profile(name=name, **_typed(Profile, data, f"profiles.{name}"))


@dataclass(frozen=True)
class Experiments:
    """experiments.yaml: the baseline, the profiles and the grid designs."""
    baseline: Toggles
    profiles: dict[str, Profile]
    grids: dict[str, dict]
    path: str = ""

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise ConfigError(f"unknown profile {name!r}; choices: {', '.join(self.profiles)} (see {self.path})")
        return self.profiles[name]


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-2 (no dot) as a string; this loader reads it as the float it is."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$|^[-+]?(?:\d+\.\d*|\.\d+)$"),
    list("-+0123456789."))


def load_experiments(path: str | Path) -> Experiments:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found; run from the repository root or pass --config PATH")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping with keys baseline, profiles, grids")
    # keys starting with "_" only hold YAML anchors (shared toggle sets)
    unknown = {k for k in raw if not str(k).startswith("_")} - {"baseline", "profiles", "grids"}
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {sorted(unknown)} in {path}; valid: baseline, profiles, "
                          f"grids (and _name keys for YAML anchors)")
    baseline = make_toggles(raw.get("baseline") or {}, f"{path}: baseline")
    profiles = {n: make_profile(n, d) for n, d in (raw.get("profiles") or {}).items()}
    grids = raw.get("grids") or {}
    bad = [str(g) for g in grids if not re.fullmatch(r"[\w.-]+", str(g))]
    if bad:
        raise ConfigError(f"grid name(s) {bad} in {path}: use letters, digits, '_', '.' and '-' only")
    if not profiles or not grids:
        raise ConfigError(f"{path} needs at least one profile and one grid")
    return Experiments(baseline, profiles, grids, str(path))
