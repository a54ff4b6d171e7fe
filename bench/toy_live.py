"""The demo's "Train PACL yourself" run: wall time and the check-set mIoU it reaches, then the same head on the
200 held-out test scenes (seed 1000) that `toy train` reports.

    python bench/toy_live.py                          # the demo's defaults (pacl_core.toy.live.LiveConfig), 2 threads
    python bench/toy_live.py --steps 400 --pool 3000 --lr 5e-3

Runs exactly the generator the demo runs (pacl_core.toy.live.live_training) on the shipped toy CLIP, from a cold
start: generating the training scenes and their frozen features is part of the time, as on a fresh server.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pacl_core.toy import live as toylive  # noqa: E402
from pacl_core.toy import model as toymodel  # noqa: E402
from pacl_core.toy.train import EVAL_SEED, evaluate_held_out  # noqa: E402

TARGET_S, TARGET_MIOU = 60.0, 0.45


def main():
    base = toylive.LiveConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=base.steps)
    p.add_argument("--pool", type=int, default=base.pool)
    p.add_argument("--lr", type=float, default=base.lr)
    p.add_argument("--seed", type=int, default=base.seed)
    p.add_argument("--eval-n", type=int, default=200, help="test scenes for the final head (0: skip)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = toylive.LiveConfig(steps=args.steps, pool=args.pool, lr=args.lr, seed=args.seed)
    backbone = toymodel.load_toy_backbone()
    t = time.perf_counter()
    *_, snap = toylive.live_training(backbone, cfg)  # run it to the end, keep the last snapshot
    wall = time.perf_counter() - t
    check = snap.checks[-1]
    print(f"live stage 2, {args.threads} thread(s), torch {torch.__version__}: {cfg}")
    print(f"time {wall:.1f} s (target <= {TARGET_S:.0f} s), of which scenes + frozen features "
          f"{snap.prepare_seconds:.1f} s")
    print(f"check set ({cfg.check} scenes): PACL mIoU {check['miou']:.3f} (target >= {TARGET_MIOU}), "
          f"patch accuracy {check['patch_acc']:.3f}; vanilla {snap.vanilla['miou']:.3f} / "
          f"{snap.vanilla['patch_acc']:.3f}")
    print("check mIoU by step: " + ", ".join(f"{c['step']}: {c['miou']:.3f}" for c in snap.checks))
    if args.eval_n:
        result = evaluate_held_out(backbone, snap.head, args.eval_n, EVAL_SEED, progress=False)
        print(f"test split ({args.eval_n} scenes, seed {EVAL_SEED}): PACL mIoU {result['pacl']['miou']:.3f}, "
              f"patch accuracy {result['pacl']['patch_acc']:.3f}")


if __name__ == "__main__":
    main()
