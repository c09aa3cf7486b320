#!/usr/bin/env python
"""Decode a dataset into the harness's uint8 cache for a profile, ahead of training: §2's
preprocessing (shorter side to the profile's prep size, centre crop, RGB), the training mean
image and RGB PCA (§2, §4.1), for train and val. Training then starts from the cache.

    python preprocess.py --profile cpu                                   # Imagenette, found as run_ablation finds it
    python preprocess.py --profile paper --data-root data/imagenet       # train/ and val/ of <wnid>/ folders
    python preprocess.py --profile paper --data-root hf:ILSVRC/imagenet-1k --workers 16

Parallel (threads), with a progress bar, resumable: a killed run continues where it stopped when
run again. Grayscale, palette, RGBA and CMYK images become RGB. An unreadable image is reported by
name and left out (the count is printed and kept with the cache), or stops the run with --strict
(as run_ablation.py does when it decodes by itself). Exit code 2 on bad input.
"""
from __future__ import annotations

import argparse
import sys
import time

from core.config import REPO, ConfigError, load_experiments

SHOWN = 10   # unreadable images named on the terminal (all are in the cache's meta.json)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="demo", help="profile from experiments.yaml: its dataset, prep size and "
                                                      "images per class (default: demo)")
    ap.add_argument("--data-root", help="ImageFolder root with train/ and val/, or hf:<name or save_to_disk folder> "
                                        "(else $ALEXNET_DATA_ROOT, else the default folders)")
    ap.add_argument("--cache-dir", help="cache folder (else $ALEXNET_CACHE_DIR, else ~/.cache/alexnet-ablation)")
    ap.add_argument("--workers", type=int, help="decoding threads (default: one per CPU)")
    ap.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of leaving it out")
    ap.add_argument("--config", default=str(REPO / "experiments.yaml"), help="experiments file")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from ablations.runner import load_data
    from core.data import DataError
    try:
        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {args.workers}")
        prof = load_experiments(args.config).profile(args.profile)
        t0 = time.perf_counter()
        data = load_data(prof, args.data_root, args.cache_dir, args.workers, skip_unreadable=not args.strict)
    except (ConfigError, DataError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    for name, split in (("train", data.train), ("val", data.val)):
        print(f"{name}: {len(split.labels)} images of {len(split.classes)} classes at {prof.prep_size} px, "
              f"{len(split.skipped)} unreadable left out -> {split.folder}")
        for message in split.skipped[:SHOWN]:
            print(f"  skipped: {message}")
        if len(split.skipped) > SHOWN:
            print(f"  ... and {len(split.skipped) - SHOWN} more (all in {split.folder}/meta.json)")
    print(f"ready in {time.perf_counter() - t0:.0f} s: python run_ablation.py --profile {args.profile}"
          + (f" --data-root {args.data_root}" if args.data_root else "")
          + (f" --cache-dir {args.cache_dir}" if args.cache_dir else "") + " --grid ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
