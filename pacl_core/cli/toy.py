"""`python -m pacl_core toy generate|train|examples`: toy-world scenes, and the embedded toy model.

    toy generate --split test --seed 1 --n 200 --out DIR    scenes, captions and masks on disk
    toy train --out DIR                                      tiny CLIP from scratch, then its PACL head
    toy train --out DIR --clip pacl_core/toy/weights/toy_clip.safetensors   stage 2 alone: a PACL head on a frozen tower
    toy examples --out assets/examples                       a few toy scenes for the demo
"""

from __future__ import annotations

import json

from pacl_core.errors import PACLError
from pacl_core.inputs import check_out_folder
from pacl_core.toy.train import RESUME_DIR, ToyTrainConfig, train_head, train_toy
from pacl_core.toy.world import DEFAULT_SIZE, write_examples, write_split


def add_parser(sub) -> None:
    p = sub.add_parser("toy", help="the toy world: generate scenes, train the embedded toy model",
                       description="The toy world: procedural scenes of shapes, and the tiny CLIP + PACL "
                                   "trained there.")
    toy_sub = p.add_subparsers(dest="toy_command", metavar="ACTION", required=True)

    g = toy_sub.add_parser("generate", help="write scenes, captions and masks to a folder",
                           description="Write N toy-world scenes (images, captions, masks) in the layout the "
                                       "evaluator reads (python -m pacl_core evaluate --dataset toy --root DIR).")
    g.add_argument("--split", default="test", choices=("train", "test"),
                   help="'test' also draws the colour-shape pairs held out of training (default: %(default)s)")
    g.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    g.add_argument("--n", type=int, default=200, help="number of scenes (default: %(default)s)")
    g.add_argument("--size", type=int, default=None, help="image size in pixels (default: 96, the toy model's)")
    g.add_argument("--out", required=True, help="output folder")
    g.set_defaults(run=run_generate)

    e = toy_sub.add_parser("examples", help="write toy example images for the demo",
                           description="Write a few held-out toy scenes as toy_NN.png into --out and list them, "
                                       "with the toy vocabulary, in --out/examples.json (other entries are kept).")
    e.add_argument("--out", default="assets/examples", help="folder (default: %(default)s)")
    e.add_argument("--n", type=int, default=4, help="number of examples (default: %(default)s)")
    e.add_argument("--seed", type=int, default=2024, help="random seed (default: %(default)s)")
    e.set_defaults(run=run_examples)

    t = toy_sub.add_parser("train", help="train the toy CLIP from scratch, then its PACL head",
                           description="Stage 1 trains a tiny CLIP (open_clip config PACL-Toy) with the contrastive "
                                       "loss on scene captions; stage 2 freezes it and trains the PACL vision "
                                       "embedder with PACLLoss on short captions that each name one thing in "
                                       "the scene. No masks are used. Writes toy_clip.* and "
                                       "toy_pacl_head.* (safetensors + JSON) to --out and evaluates them on "
                                       "held-out scenes. With --clip, only stage 2 runs, on that frozen tower.")
    t.add_argument("--out", required=True, help="output folder (assets/toy is the shipped model)")
    t.add_argument("--clip", default=None,
                   help="train stage 2 alone: freeze this toy tower (a toy_clip.safetensors, e.g. the shipped "
                        "pacl_core/toy/weights/toy_clip.safetensors) and write only --out/toy_pacl_head.* "
                        "(safetensors + JSON), a head every --head option accepts")
    t.add_argument("--seed", type=int, default=None, help="random seed (default: the shipped model's, 0)")
    t.add_argument("--clip-steps", default=None,
                   help="stage-1 steps per phase, comma-separated (default: the shipped recipe, 1400,250)")
    t.add_argument("--pool", default=None,
                   help="training scenes per phase, comma-separated (default: the shipped recipe, 24000,6000); "
                        "with --clip one number, stage 2's scenes (default: 6000)")
    t.add_argument("--pacl-steps", type=int, default=None, help="stage-2 steps (default: the recipe's, 1000)")
    t.add_argument("--pacl-lr", type=float, default=None,
                   help="stage-2 peak learning rate (default: the recipe's, 5e-3; the shipped head used 2e-3)")
    t.add_argument("--pacl-captions", default=None, choices=("mentions", "scene"),
                   help="stage 2's captions: 'mentions' name one thing per scene (the shipped recipe), 'scene' "
                        "the whole scene")
    t.add_argument("--tower-candidates", default=None,
                   help="comma-separated steps of the last stage-1 phase at which to keep the tower as a further "
                        "candidate, e.g. 125; stage 2 runs on each and the tower whose head has the lowest "
                        "held-out PACL loss on captions is kept (no masks; default: none, the shipped recipe)")
    t.add_argument("--threads", type=int, default=None, help="CPU threads (default: 2)")
    t.add_argument("--eval-n", type=int, default=200, help="held-out scenes to evaluate on afterwards (0: skip)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run stopped in --out from its last checkpoint (--out/.resume/, kept every "
                        "50 steps); the settings must be the same")
    t.set_defaults(run=run_train)


def run_generate(args) -> int:
    size = DEFAULT_SIZE if args.size is None else args.size
    if not 32 <= size <= 1024:
        raise PACLError(f"--size must be between 32 and 1024 pixels, got {size}")
    out = write_split(args.out, split=args.split, seed=args.seed, n=args.n, size=size, progress=args.n >= 50)
    print(f"wrote {args.n} {args.split} scenes (seed {args.seed}, {size} px) to {out}")
    return 0


def run_examples(args) -> int:
    if not 1 <= args.n <= 50:
        raise PACLError("--n must be between 1 and 50")
    written = write_examples(args.out, seed=args.seed, n=args.n)
    print(f"wrote {len(written)} toy examples to {args.out} and listed them in examples.json")
    return 0


def _per_phase(text: str | None, name: str, n_phases: int) -> list[int] | None:
    """'1200,400' -> [1200, 400], one positive integer per stage-1 phase."""
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise PACLError(f"--{name} must be {n_phases} comma-separated integers, e.g. 1200,400") from None
    if len(values) != n_phases or min(values) < 1:
        raise PACLError(f"--{name} needs {n_phases} comma-separated integers of at least 1, e.g. 1200,400")
    return values


STAGE1_OPTIONS = ("clip_steps", "tower_candidates")  # options of stage 1, which --clip skips


def run_train(args) -> int:
    cfg = ToyTrainConfig()
    n = len(cfg.clip_phases)
    steps = _per_phase(args.clip_steps, "clip-steps", n) or [p[1] for p in cfg.clip_phases]
    if args.clip is not None and args.pool is not None:  # stage 2 alone trains on the last phase's pool
        pools = [p[2] for p in cfg.clip_phases[:-1]] + _per_phase(args.pool, "pool", 1)
    else:
        pools = _per_phase(args.pool, "pool", n) or [p[2] for p in cfg.clip_phases]
    for name in ("pacl_steps", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise PACLError(f"--{name.replace('_', '-')} must be at least 1")
    if args.pacl_lr is not None and not 0 < args.pacl_lr <= 1:
        raise PACLError(f"--pacl-lr must be in (0, 1], got {args.pacl_lr}")
    if args.eval_n < 0:
        raise PACLError("--eval-n must be 0 or more")
    if args.clip is not None:
        given = [f"--{k.replace('_', '-')}" for k in STAGE1_OPTIONS if getattr(args, k) is not None]
        if given:
            raise PACLError(f"{given[0]} sets stage 1, which --clip skips (it trains only the PACL head)")
    candidates = ()
    if args.tower_candidates is not None and args.clip is None:
        try:
            candidates = tuple(int(v) for v in str(args.tower_candidates).split(","))
        except ValueError:
            raise PACLError("--tower-candidates must be comma-separated step numbers, e.g. 125") from None
        if not all(0 < c < steps[-1] for c in candidates):
            raise PACLError(f"--tower-candidates must be steps from 1 to {steps[-1] - 1} of the last phase")
    out = check_out_folder(args.out)  # writable, before any work; nothing is made for input refused later
    if args.resume and not (out / RESUME_DIR / "checkpoint.safetensors").is_file():
        print(f"no checkpoint in {out / RESUME_DIR}: starting from the beginning")
    phases = tuple((p[0], s, q) for p, s, q in zip(cfg.clip_phases, steps, pools))
    overrides = {"seed": args.seed, "pacl_steps": args.pacl_steps, "pacl_lr": args.pacl_lr, "threads": args.threads,
                 "pacl_captions": args.pacl_captions, "tower_candidates": candidates or None}
    cfg = ToyTrainConfig(clip_phases=phases, **{k: v for k, v in overrides.items() if v is not None})
    if args.clip is not None:
        info = train_head(out, args.clip, cfg, progress=True, evaluate_n=args.eval_n, resume=args.resume)
        print(f"trained the PACL head in {info['seconds']['total']:.0f} s on the frozen tower {args.clip}; "
              f"wrote {out}/toy_pacl_head.*")
    else:
        info = train_toy(out, cfg, progress=True, evaluate_n=args.eval_n, resume=args.resume)
        print(f"trained in {info['seconds']['total']:.0f} s; wrote {out}/toy_clip.* and {out}/toy_pacl_head.*")
    if "eval" in info:
        summary = {m: {k: round(info["eval"][m][k], 3) for k in ("miou", "patch_acc", "coherence_auc")}
                   for m in ("vanilla", "pacl")}
        print(json.dumps(summary, indent=2))
    return 0
