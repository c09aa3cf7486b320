#!/usr/bin/env python
"""Classify images with a trained run: the top-k classes with their probabilities.

    python classify_image.py -i photo.jpg -r <MLflow run id> [--tracking-uri URI] [-k 5] [--ten-crop]
    python classify_image.py -i a.jpg -i b.png -w weights.pt -d cpu

The run's own config decides the network (architecture toggles, profile geometry), the input (its
training mean image, its size) and the averaging of the 10 crops; WordNet ids are shown with their
names where a map is at hand (torchvision's Imagenette names). Weights load with weights_only=True.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from core.errors import ConfigError


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-i", "--image", action="append", required=True, help="image file (repeatable)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("-r", "--run-id", help="MLflow run id of a trained cell")
    src.add_argument("-w", "--weights", help="a model/weights.pt file of a run")
    ap.add_argument("-d", "--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("-k", "--top", type=int, default=5, help="classes to show (default 5)")
    ap.add_argument("--ten-crop", action="store_true", help="average the paper's 10 views (§4.1)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (with -r; else $MLFLOW_TRACKING_URI)")
    return ap


def class_names(classes: list[str]) -> list[str]:
    """WordNet ids with their names where torchvision knows them (Imagenette's ten)."""
    try:
        from torchvision.datasets import Imagenette
        names = {w: n[0] for w, n in getattr(Imagenette, "_WNID_TO_CLASS", {}).items()}
    except ImportError:
        names = {}
    return [f"{names[c]} ({c})" if c in names else c for c in classes]


def fetch(run_id: str, uri: str | None, folder: str) -> Path:
    from core.tracking import download_artifact
    return download_artifact(run_id, "model/weights.pt", folder, uri)


def load(path: Path):
    """(model in eval mode, Pipeline, RunConfig, classes) from a bundle; ConfigError when it is not one."""
    import torch
    from core.engine import BUNDLE_FORMAT, build_model, build_pipeline
    from core.config import Profile, RunConfig
    from core.data import Stats
    from core.toggles import make_toggles
    if not path.is_file():
        raise ConfigError(f"{path} not found; pass -w with a run's model/weights.pt, or -r RUN_ID")
    try:
        b = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # noqa: BLE001 - any unreadable file gets the same answer
        raise ConfigError(f"{path} is not a weights file this harness wrote ({type(err).__name__}); "
                          f"pass a run's model/weights.pt") from None
    if not isinstance(b, dict) or b.get("format") != BUNDLE_FORMAT:
        raise ConfigError(f"{path} holds bare weights without the run's config, classes and mean image "
                          f"(a run made before model bundles, or another file); classify with a newer run")
    c = b["config"]
    prof = dict(c["profile"], stem=tuple(c["profile"]["stem"]))
    cfg = RunConfig(Profile(**prof), make_toggles(c["toggles"]), c["seed"])
    model = build_model(cfg, len(b["classes"]))
    try:
        model.load_state_dict(b["state_dict"])
    except RuntimeError as err:
        raise ConfigError(f"{path}: the weights do not fit the architecture its config describes "
                          f"({str(err).splitlines()[0]})") from None
    stats = Stats(b["mean_image"].numpy(), torch.zeros(3).numpy(), torch.eye(3).numpy())
    return model.eval(), build_pipeline(cfg, stats), cfg, b["classes"]


def classify(paths: list[str], model, pipeline, cfg, classes, device: str, top: int, ten_crop: bool):
    import torch
    from core.data import DataError, load_image
    dev = torch.device(device)
    model, pipeline = model.to(dev), pipeline.to(dev)
    names = class_names(classes)
    out = []
    for p in paths:
        try:
            image = load_image(p, cfg.profile.prep_size)[None]
        except DataError as err:
            raise ConfigError(f"{err}; pass an image file") from None
        with torch.no_grad():
            views = pipeline.eval_views(image, ten_crop)
            logits = torch.stack([model(v.contiguous()) for v in views]).float()
            prob = logits.softmax(-1).mean(0)[0] if cfg.toggles.tta_average == "softmax" else logits.mean(0)[0].softmax(-1)
        values, idx = prob.topk(min(top, len(classes)))
        out.append((p, [(names[i], float(v)) for v, i in zip(values, idx.tolist())]))
    return out


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.top < 1:
            raise ConfigError(f"-k must be at least 1, got {args.top}")
        if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
            raise ConfigError(f"-d {args.device!r}: use cpu or cuda")
        for p in args.image:
            if not Path(p).is_file():
                raise ConfigError(f"image {p} not found")
        with tempfile.TemporaryDirectory() as tmp:
            path = fetch(args.run_id, args.tracking_uri, tmp) if args.run_id else Path(args.weights)
            model, pipeline, cfg, classes = load(path)
        import torch
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("-d cuda: this machine has no CUDA device; use -d cpu")
        results = classify(args.image, model, pipeline, cfg, classes, args.device, args.top, args.ten_crop)
    except ConfigError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    for path, top in results:
        print(path)
        for name, p in top:
            print(f"  {100 * p:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
