"""Zero-shot segmentation benchmarks: run a Segmenter over a dataset, accumulate a confusion matrix, report.

For each method: mIoU, pixel accuracy, mean class accuracy and per-class IoU (over the whole split, as
mmsegmentation computes them), a per-class table, a bar plot PNG and JSON. The protocol (short side, sliding
window, background rule, logit scale, prompts) comes from, in order: the user's options, the method's official
settings for that benchmark (pacl_core.methods), the benchmark's defaults (pacl_core.eval.datasets).
Under torchrun every process segments every W-th image and the confusion matrices are summed over the processes
(`shard_indices`, `reduce_confusion`), so N processes give exactly the one-process numbers.
"""

from __future__ import annotations

import csv
import json
import math
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pacl_core.errors import PACLError
from pacl_core.eval.datasets import METHOD_DATASET_KEYS, DatasetSpec, SegDataset, get_spec, read_class_names
from pacl_core.methods import TRAINING_FREE, method_defaults
from pacl_core.metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from pacl_core.prompts import get_templates
from pacl_core.segment import Segmentation, Segmenter, segment_many
from pacl_core.train.distributed import global_sum

TRAINING_FREE_TEMPLATES = "imagenet80"  # MaskCLIP, SCLIP, ClearCLIP and NACLIP all use CLIP's 80 ImageNet prompts


# ---- the protocol -------------------------------------------------------------------------------------


def method_settings(method: str, dataset: str, native_size: int) -> dict:
    """The method's official inference settings for this benchmark (empty for vanilla / pacl)."""
    return method_defaults(method, dataset=METHOD_DATASET_KEYS.get(dataset), native_size=native_size)


def resolve_protocol(spec: DatasetSpec, method: str, backbone, user: dict) -> dict:
    """Settings for one (benchmark, method): user options > the method's official ones > the benchmark's defaults."""
    scale = backbone.native_size / 224
    md = method_settings(method, spec.name, backbone.native_size)
    base = {"image_size": round(spec.short_side * scale), "mode": "slide", "window": round(spec.window * scale),
            "stride": round(spec.stride * scale), "background": spec.default_background, "logit_scale": None,
            "templates": TRAINING_FREE_TEMPLATES if method in TRAINING_FREE else "imagenet7", "refine": None,
            "shifts": 1, "area_threshold": None}
    proto = {k: md.get(k, v) for k, v in base.items()}  # the official per-benchmark settings (METHOD_DEFAULTS)
    if user.get("window") is not None and user.get("stride") is None:
        proto["stride"] = None  # the segmenter's default: half the given window
    proto.update({k: v for k, v in user.items() if v is not None and k in base})
    if proto["background"] in ("none", ""):
        proto["background"] = None
    if proto["area_threshold"] in ("none", ""):
        proto["area_threshold"] = None
    if not spec.background and proto["background"] is not None:
        if user.get("background") not in (None, "none"):
            raise PACLError(f"{spec.name} has no background class; --background applies to voc21 and context60 only")
        proto["background"] = None
    return proto


def class_words(spec: DatasetSpec, names_file=None) -> tuple[list[str], np.ndarray]:
    """The words to segment with and, per word, its class train id. A names file may give synonyms per class and,
    on a benchmark with background, a first line of words for the background itself (class 0), as the official
    SCLIP / SC-CLIP files cls_voc21.txt and cls_context60.txt do."""
    if names_file is None:
        names = [[c] for c in spec.words]
    else:
        names = read_class_names(names_file)
        if len(names) not in (len(spec.words), spec.num_classes if spec.background else -1):
            extra = f" (one per class, background excluded), or {spec.num_classes} with background words first"
            raise PACLError(f"{names_file}: {len(names)} lines, but {spec.name} needs {len(spec.words)}"
                            + (extra if spec.background else " (one per class)"))
    words, word_class, seen = [], [], set()
    first = 1 if spec.background and len(names) == len(spec.words) else 0
    for k, synonyms in enumerate(names):
        for w in synonyms:
            if w.casefold() in seen:
                raise PACLError(f"class name '{w}' appears twice; each name must belong to one class")
            seen.add(w.casefold())
            words.append(w)
            word_class.append(k + first)
    return words, np.asarray(word_class, dtype=np.int64)


def mask_to_classes(mask: np.ndarray, word_class: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Segmenter mask (h, w) of word indices, -1 = background -> train ids (H, W); background -> class 0."""
    table = np.concatenate([[0], word_class])  # index 0 <- mask value -1
    pred = table[mask.astype(np.int64) + 1]  # (h, w)
    if pred.shape != tuple(shape):  # the segmenter downscales very large images
        pred = cv2.resize(pred.astype(np.int32), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return pred.astype(np.int64)


# ---- the loop -----------------------------------------------------------------------------------------


@contextmanager
def using_templates(backbone, templates):
    """Embed words with this prompt ensemble inside the block; the backbone's own set is restored after."""
    saved = backbone.templates
    backbone.templates = get_templates(templates)
    try:
        yield backbone
    finally:
        backbone.templates = saved


def make_segmenter(backbone, method: str, proto: dict, head=None, num_words: int = 1):
    kwargs = dict(method=method, head=head, image_size=proto["image_size"], mode=proto["mode"],
                  window=proto["window"], stride=proto["stride"], background=proto["background"],
                  logit_scale=proto["logit_scale"], max_words=max(num_words, 1), shifts=proto.get("shifts") or 1,
                  area_threshold=proto.get("area_threshold"), templates=proto.get("templates"))
    if proto.get("refine"):
        kwargs["refine"] = proto["refine"]
    return Segmenter(backbone, **kwargs)


def benchmark_segmenter(spec: DatasetSpec, backbone, method: str, user: dict | None = None, head=None,
                        names_file=None) -> tuple[Segmenter, list[str], np.ndarray, np.ndarray | None]:
    """(segmenter, words, each word's class id, area-threshold groups) for one method on one benchmark, with the
    official protocol (resize, windows, refinement, background, area threshold, logit scale, templates)."""
    words, word_class = class_words(spec, names_file)
    proto = resolve_protocol(spec, method, backbone, user or {})
    segmenter = make_segmenter(backbone, method, proto, head=head, num_words=len(words))
    # groups, for the area threshold: synonyms are one class, background words none
    groups = np.where(word_class == 0, -1, word_class) if spec.background else word_class
    return segmenter, words, word_class, groups


def segment_for_benchmark(backbone, dataset: str, method: str, image: np.ndarray, names_file=None, head=None,
                          user: dict | None = None) -> tuple[Segmentation, np.ndarray]:
    """One photo (H, W, 3) uint8 segmented as `evaluate` segments a benchmark's images -> (its Segmentation: the
    words' scores at the photo's size, after refinement; the predicted class ids (H, W), 0 = background where
    the benchmark has one)."""
    spec = get_spec(dataset)
    segmenter, words, word_class, groups = benchmark_segmenter(spec, backbone, method, user, head, names_file)
    seg = segment_many([segmenter], image, words, groups=groups)[method]
    return seg, mask_to_classes(seg.mask, word_class, image.shape[:2])


def shard_indices(n: int) -> range:
    """This process's images: every W-th from its rank under torchrun, all of them otherwise."""
    if dist.is_available() and dist.is_initialized():
        return range(dist.get_rank(), n, dist.get_world_size())
    return range(n)


def reduce_confusion(conf: np.ndarray) -> np.ndarray:
    """The (K, K) confusion matrix summed over the processes (itself when not distributed)."""

    if not (dist.is_available() and dist.is_initialized()):
        return conf
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return global_sum(torch.from_numpy(conf).to(device)).cpu().numpy()


def evaluate_dataset_many(dataset: SegDataset, segmenters, words: list[str], word_class: np.ndarray,
                          progress: bool = True, desc: str = "evaluate") -> dict:
    """{method: metrics} for several segmenters (one per method) in one pass over this process's share of the
    dataset: each image is read once and segmented by all of them with segment_many, which runs the backbone's
    trunk once per input geometry; under torchrun the confusion matrices are summed over the processes."""
    K = dataset.spec.num_classes
    conf = {s.method: np.zeros((K, K), dtype=np.int64) for s in segmenters}
    groups = np.where(word_class == 0, -1, word_class) if dataset.spec.background else word_class  # area_keep
    for i in tqdm(shard_indices(len(dataset)), desc=desc, unit="img", disable=not progress, dynamic_ncols=True):
        _, image, label = dataset[i]
        for method, seg in segment_many(segmenters, image, words, groups=groups).items():
            assert len(seg.words) == len(words), "the segmenter dropped or merged class names"
            conf[method] += confusion_matrix(mask_to_classes(seg.mask, word_class, label.shape), label, K)
    return {m: metrics_from_confusion(reduce_confusion(c), dataset.spec.classes) for m, c in conf.items()}


def metrics_from_confusion(conf: np.ndarray, classes) -> dict:
    """mIoU, pixel accuracy, mean accuracy and per-class IoU (None where a class is absent from GT and prediction)."""
    iou = iou_per_class(conf)
    gt = conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(gt > 0, np.diag(conf) / gt, np.nan)
    return {"miou": mean_iou(conf), "pixel_accuracy": pixel_accuracy(conf),
            "mean_accuracy": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
            "per_class_iou": {c: (None if math.isnan(v) else float(v)) for c, v in zip(classes, iou)},
            "confusion": conf.tolist()}


def evaluate_methods(dataset: SegDataset, backbone, methods: list[str], user: dict, head=None, names_file=None,
                     progress: bool = True) -> dict:
    """{method: result} for each method on one dataset: the backbone loaded once, each image read once, and
    the backbone's trunk shared by the methods whose protocols give the same input geometry."""
    words, word_class = class_words(dataset.spec, names_file)
    segmenters, protos = [], {}
    for method in methods:
        proto = resolve_protocol(dataset.spec, method, backbone, user)
        segmenter = make_segmenter(backbone, method, proto, head=head, num_words=len(words))
        proto.update(image_size=segmenter.image_size, mode=segmenter.mode, window=segmenter.window,
                     stride=segmenter.stride, logit_scale=segmenter.logit_scale, refine=segmenter.refine)
        segmenters.append(segmenter)
        protos[method] = proto
    desc = f"{dataset.spec.name} {','.join(methods)}"
    metrics = evaluate_dataset_many(dataset, segmenters, words, word_class, progress, desc=desc)
    return {m: dict(metrics[m], dataset=dataset.spec.name, split=dataset.split, images=len(dataset), method=m,
                    protocol=protos[m]) for m in methods}


# ---- reports ------------------------------------------------------------------------------------------


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def iou_table(results: dict) -> str:
    """A Markdown table: one row per class, one column per method (IoU %), then mIoU / pixel accuracy rows."""
    methods = list(results)
    classes = list(next(iter(results.values()))["per_class_iou"])
    lines = ["| class | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for c in classes:
        lines.append(f"| {c} | " + " | ".join(_pct(results[m]["per_class_iou"][c]) for m in methods) + " |")
    lines.append("| **mIoU** | " + " | ".join(f"**{_pct(results[m]['miou'])}**" for m in methods) + " |")
    lines.append("| pixel acc. | " + " | ".join(_pct(results[m]["pixel_accuracy"]) for m in methods) + " |")
    return "\n".join(lines)


def plot_iou(result: dict, path) -> Path:
    """Horizontal bar plot of per-class IoU (%), best first, with the mIoU as a line; absent classes are left out."""
    import matplotlib  # local: pyplot needs its headless backend chosen before it is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(((c, v) for c, v in result["per_class_iou"].items() if v is not None),
                   key=lambda cv: cv[1], reverse=True)  # classes absent from labels and predictions have no IoU
    names, values = [c for c, _ in items], [100 * v for _, v in items]
    absent = len(result["per_class_iou"]) - len(items)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.18 * len(names)))
    ax.barh(range(len(names)), values, color="#4c72b0")
    ax.axvline(100 * result["miou"], color="#c44e52", linestyle="--", label=f"mIoU {100 * result['miou']:.1f}")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.set_title(f"{result['dataset']} ({result['images']} images), method {result['method']}"
                 + (f"\n{absent} classes absent from labels and predictions" if absent else ""), fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_reports(results: dict, out) -> list[Path]:
    """OUT/metrics.json, OUT/per_class_iou.csv, OUT/per_class_iou.md and OUT/iou_<method>.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json", out / "per_class_iou.csv", out / "per_class_iou.md"]
    written[0].write_text(json.dumps(results, indent=2))
    methods = list(results)
    classes = list(results[methods[0]]["per_class_iou"])
    with open(written[1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", *methods])
        for c in classes:
            w.writerow([c, *("" if results[m]["per_class_iou"][c] is None else f"{results[m]['per_class_iou'][c]:.6f}"
                             for m in methods)])
    written[2].write_text(iou_table(results) + "\n")
    for m in methods:
        written.append(plot_iou(results[m], out / f"iou_{m}.png"))
    return written


def summary_json(results: dict, with_confusion: bool = False) -> dict:
    """The results without the (large) confusion matrices, for printing."""
    return {m: {k: v for k, v in r.items() if with_confusion or k != "confusion"} for m, r in results.items()}
