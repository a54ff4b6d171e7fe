"""Wall time of `toy train` (both stages, the shipped recipe) and images/s per stage, against the 10-minute target.

    python bench/toy_train.py                 # 2 threads, the default recipe, no evaluation afterwards
    python bench/toy_train.py --threads 1

It runs exactly what `python -m pacl_core toy train` runs (pacl_core.toy.train.train_toy) into a temporary folder,
then reads the per-stage seconds that train_toy records. Stage-2 images/s counts PACL steps x batch over the
stage-2 time, which includes computing the frozen patch tokens of its pool once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pacl_core.toy.train import ToyTrainConfig, train_toy  # noqa: E402

TARGET_S = 600.0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    cfg = ToyTrainConfig(threads=args.threads)
    with tempfile.TemporaryDirectory() as out:
        info = train_toy(out, cfg, progress=False, evaluate_n=0)
    sec = info["seconds"]
    print(f"toy train, {args.threads} thread(s), torch {info['torch']}, "
          f"open_clip {info['open_clip']}")
    for size, steps, pool in cfg.clip_phases:
        t = sec[f"clip_{size}px"]
        print(f"stage 1 at {size:3d} px: {steps:5d} steps x {cfg.clip_batch} in {t:6.1f} s = "
              f"{steps * cfg.clip_batch / t:6.0f} images/s (+ {sec[f'data_{size}px']:.1f} s making {pool} scenes)")
    t = sec["pacl"]
    print(f"stage 2 (PACL):    {cfg.pacl_steps:5d} steps x {cfg.pacl_batch} in {t:6.1f} s = "
          f"{cfg.pacl_steps * cfg.pacl_batch / t:6.0f} images/s")
    total = sec["total"]
    print(f"total {total:.1f} s ({total / 60:.1f} min): {'within' if total <= TARGET_S else 'OVER'} the "
          f"{TARGET_S / 60:.0f}-minute target")


if __name__ == "__main__":
    main()
