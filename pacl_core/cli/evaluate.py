"""`python -m pacl_core evaluate --dataset NAME --root DIR --method M`: zero-shot segmentation benchmarks.

Prints mIoU, pixel accuracy and a per-class IoU table (or, with --json, only JSON on stdout); with --out also
writes metrics.json, per_class_iou.csv/.md and one bar plot PNG per method. `--method a,b` evaluates several
methods with one loaded backbone. `--dataset toy` runs the toy world's evaluation.
`torchrun --nproc-per-node N -m pacl_core evaluate ...` splits the images over N processes (one per GPU with
--device cuda) and sums their confusion matrices: the same numbers, N times sooner; only rank 0 prints and writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from pacl_core.cli.args import (
    HEAD_HELP,
    add_model_args,
    add_shifts_arg,
    backbone_from_args,
    check_head_arg,
    check_shifts_arg,
)
from pacl_core.errors import PACLError
from pacl_core.eval.datasets import DATASET_NAMES, DATASETS, SegDataset
from pacl_core.eval.evaluate import evaluate_methods, iou_table, summary_json, write_reports
from pacl_core.inputs import check_out_folder
from pacl_core.methods import parse_methods
from pacl_core.segment import REFINERS, check_area_threshold
from pacl_core.toy.evaluate import evaluate_toy, object_patch_probe
from pacl_core.train.distributed import env_world, init_distributed, shutdown


def _defaults_help() -> str:
    rows = [f"{n}: short side {s.short_side}, window {s.window}/{s.stride}"
            + (f", background {s.default_background}" if s.background else "") for n, s in DATASETS.items()]
    return "; ".join(rows)


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="mIoU on a segmentation benchmark (VOC, Context, COCO-Stuff, ADE20K, toy)",
                       description="Zero-shot semantic segmentation benchmark. Protocol defaults (pixels for "
                                   "ViT-B/16; a training-free method's official settings take precedence): "
                                   + _defaults_help())
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    p.add_argument("--root", required=True,
                   help="dataset folder: VOCdevkit (or VOC2012/VOC2010), coco_stuff164k, ADEChallengeData2016, or "
                        "the toy world's folder")
    p.add_argument("--split", default=None, help="val (default) or train (not for toy: its folder is one split)")
    p.add_argument("--method", default=None,
                   help="vanilla, pacl, maskclip, sclip, clearclip, naclip, scclip; comma-separated for several "
                        "(default: vanilla; toy: vanilla,pacl)")
    p.add_argument("--head", default=None, help=HEAD_HELP + "; for --method pacl")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (quick looks)")
    g = p.add_argument_group("protocol (defaults per dataset and method)")
    g.add_argument("--short-side", dest="image_size_eval", type=int, default=None, metavar="PX",
                   help="slide: resize the short side to this many pixels; whole: the square input size")
    g.add_argument("--mode", default=None, choices=("whole", "slide"))
    g.add_argument("--window", type=int, default=None, help="sliding window size in pixels")
    g.add_argument("--stride", type=int, default=None, help="sliding window stride in pixels")
    g.add_argument("--background", default=None,
                   help="voc21/context60: entropy:T, prob:T, score:T or none (default: entropy:1.5, or the "
                        "method's official rule)")
    g.add_argument("--logit-scale", type=float, default=None, help="softmax scale for the background rule")
    g.add_argument("--area-threshold", default=None, metavar="SHARE",
                   help="a class covering no more than this share of the image falls away, its pixels to the next "
                        "best class or background (SCLIP's / SC-CLIP's area_thd; default: the method's official "
                        "value, 0.1 on voc21 for sclip and scclip), or none")
    g.add_argument("--refine", default=None, choices=("none", *REFINERS),
                   help="refine the score maps: affinity (the patches' own embeddings) or pamr (the image's colours); "
                        "default: the method's official setting (PAMR for NACLIP), none for off")
    add_shifts_arg(g, default=None)  # None: not given, so a method's own protocol applies (one pass); toy too
    g.add_argument("--class-names", default=None,
                   help="file with one line per class (background excluded), optionally comma-separated synonyms")
    g.add_argument("--probe", action="store_true",
                   help="toy only: also fit object_patch_probe, a diagnostic trained WITH masks on generated scenes "
                        "that measures how well the frozen patch tokens tell an object's shape (~1 min)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help="folder for metrics.json, per_class_iou.csv/.md and iou_METHOD.png")
    o.add_argument("--json", action="store_true", help="print the results as JSON on stdout (nothing else)")
    o.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_model_args(p)
    p.set_defaults(run=run)


def _methods(spec: str | None) -> list[str] | None:
    return None if spec is None else parse_methods(spec)


def run(args) -> int:
    methods = _methods(args.method)
    if args.limit is not None and args.limit <= 0:
        raise PACLError("--limit must be positive")
    check_shifts_arg(args.shifts)
    check_head_arg(args.head)
    if args.area_threshold not in (None, "none"):
        check_area_threshold(args.area_threshold)
    if args.out:
        check_out_folder(args.out)  # before hours of evaluation, not after
    if args.dataset == "toy":
        return _run_toy(args, methods)
    if args.probe:
        raise PACLError("--probe applies to --dataset toy only")
    dataset = SegDataset(args.dataset, args.root, args.split or "val", args.limit)  # fails fast, before the model loads
    methods = methods or ["vanilla"]
    info = init_distributed(args.device)
    try:
        return _run_benchmark(args, dataset, methods, info)
    finally:
        shutdown(info)


def _run_benchmark(args, dataset, methods, info) -> int:
    args.device = info.device  # cuda:LOCAL_RANK under torchrun
    backbone = backbone_from_args(args)
    user = {"image_size": args.image_size_eval, "mode": args.mode, "window": args.window, "stride": args.stride,
            "background": args.background, "logit_scale": args.logit_scale, "templates": args.templates,
            "refine": args.refine, "shifts": args.shifts, "area_threshold": args.area_threshold}
    results = evaluate_methods(dataset, backbone, methods, user, head=args.head, names_file=args.class_names,
                               progress=args.progress and info.is_main)
    if not info.is_main:
        return 0  # every rank holds the summed results; rank 0 reports them
    written = write_reports(results, args.out) if args.out else []
    if args.json:
        print(json.dumps(summary_json(results), indent=2))
        return 0
    print(f"{dataset.spec.title}: {len(dataset)} images, model {args.model}")
    print(iou_table(results))
    for m, r in results.items():
        print(f"{m}: mIoU {100 * r['miou']:.2f}  pixel acc. {100 * r['pixel_accuracy']:.2f}  "
              f"mean acc. {100 * r['mean_accuracy']:.2f}  ({_protocol_line(r['protocol'])})")
    if written:
        print(f"wrote {', '.join(str(w) for w in written)}")
    return 0


def _protocol_line(proto: dict) -> str:
    parts = [f"{proto['mode']} {proto['image_size']}"]
    if proto["mode"] == "slide":
        parts.append(f"window {proto['window']}/{proto['stride']}")
    parts.append(f"background {proto['background'] or 'none'}")
    parts.append(f"templates {proto['templates']}")
    if proto.get("area_threshold") is not None:
        parts.append(f"area threshold {proto['area_threshold']}")
    if (proto.get("shifts") or 1) > 1:
        parts.append(f"{proto['shifts']}x{proto['shifts']} shifted passes")
    return ", ".join(parts)


# benchmark-only options: the toy world has one fixed protocol (whole image at the model's size, its own classes)
_NOT_FOR_TOY = {"split": "--split", "image_size_eval": "--short-side", "mode": "--mode", "window": "--window",
                "stride": "--stride", "background": "--background", "logit_scale": "--logit-scale",
                "class_names": "--class-names", "area_threshold": "--area-threshold"}


def _run_toy(args, methods) -> int:
    if env_world()[1] > 1:
        raise PACLError("--dataset toy runs in one process; start it without torchrun")
    given = [flag for attr, flag in _NOT_FOR_TOY.items() if getattr(args, attr, None) is not None]
    if given:
        raise PACLError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --dataset toy "
                        "(one protocol: the whole scene at the model's input size, the toy world's classes)")
    if not Path(args.root).is_dir():
        raise PACLError(f"{args.root}: no such folder")
    backbone = backbone_from_args(args)
    roc = str(Path(args.out) / "coherence_roc.png") if args.out else None
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    results = evaluate_toy(args.root, backbone, methods=tuple(methods or ("vanilla", "pacl")), head=args.head,
                           limit=args.limit, roc_png=roc if roc else None, progress=args.progress and not args.json,
                           shifts=args.shifts or 1, refine=None if args.refine == "none" else args.refine)
    if args.probe:
        results["object_patch_probe"] = object_patch_probe(backbone)
    if args.out:
        (Path(args.out) / "metrics.json").write_text(json.dumps(results, indent=2, default=float))
    if args.json:
        print(json.dumps(results, indent=2, default=float))
        return 0
    for m, r in results.items():
        if isinstance(r, dict):  # one entry per method; the others describe the run (classes, n_images, ...)
            print(f"{m}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float)))
    if (results.get("shifts") or 1) > 1:
        print(f"masks from {results['shifts']}x{results['shifts']} shifted passes (patch metrics: one pass)")
    if results.get("refine"):
        print(f"masks refined with {results['refine']} (patch metrics: before refinement)")
    if results.get("roc_png"):
        print(f"coherence ROC: {results['roc_png']}")
    return 0
