"""Evaluation in the toy world: segmentation mIoU, patch accuracy and semantic coherence, vanilla vs PACL.

`evaluate_toy(root, backbone, head=None, methods=("vanilla", "pacl"), limit=None, roc_png=None, shifts=1,
refine=None) -> dict`
reads a folder written by `python -m pacl_core toy generate` and returns, per method,

    {"miou", "patch_acc", "coherence_auc", "pixel_acc", "per_class_iou": {class: IoU or None},
     "seen": {...same four...}, "unseen": {...}}

plus "roc_png" (the ROC figure of semantic coherence), "classes", "words", "templates", "n_images", "shifts",
"refine" and "cls_zero_shot" (CLIP's image-level shape accuracy on the single-object scenes, a check on stage 1) and
"oracle_miou" (the mIoU a perfect patch classifier would reach at this patch grid, with the same shifted passes:
the ceiling). Each method
also reports "attention_on_object": {"attention", "area"}, the share of a(x, shape word) that lands on that
shape's own patches, beside their share of the image (what uniform attention gives), at the PACL head's tau,
and "patch_acc_parts": {"background": share of background patches whose best word is "background",
"objects_among_shapes": share of object patches whose best *shape* word is their shape (chance 1/8)}.
The vocabulary is the class names: the 8 shape words and the word "background", each embedded with the
backbone's prompt templates; every pixel takes the word with the highest cosine (bilinearly upsampled patch
scores, exactly as `Segmenter` does in "whole" mode, with its `shifts` and `refine`). "seen" ignores the pixels
of objects whose colour-shape pair was held out of training, "unseen" ignores those of the other objects; both
keep the background. From the command line: `python -m pacl_core evaluate
--dataset toy --root DIR [--probe]`.

`object_patch_probe(backbone, ...)` is a diagnostic that uses masks and is never part of training. It measures how
well the frozen patch tokens tell an object patch's shape: a probe is trained with labels on the patches (at least
60% one object) of generated training scenes and tested on held-out scenes (`evaluate --dataset toy --probe`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pacl_core.errors import PACLError
from pacl_core.inputs import check_out_folder
from pacl_core.metrics import IGNORE_INDEX, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from pacl_core.probes import (
    attention_on_target,
    coherence_roc,
    fit_probe,
    patch_accuracy,
    patch_label_counts,
    patch_majority_labels,
    save_roc_png,
)
from pacl_core.segment import Segmenter, group_by_geometry, run_pass, shifted_scores
from pacl_core.toy.world import CLASSES, ToyDataset, make_scene

SUBSETS = ("all", "seen", "unseen")


def subset_labels(item: dict) -> dict[str, np.ndarray]:
    """The item's mask for each subset: 'all', 'seen' (unseen objects ignored), 'unseen' (seen objects ignored)."""
    mask = item["mask"].astype(np.int64)  # (H, W)
    unseen = ToyDataset.unseen_pixels(item)  # (H, W)
    seen_obj = (item["instances"] > 0) & ~unseen
    return {"all": mask, "seen": np.where(unseen, IGNORE_INDEX, mask),
            "unseen": np.where(seen_obj, IGNORE_INDEX, mask)}


def _clean(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _summarise(conf: np.ndarray, emb: torch.Tensor, patch_labels: np.ndarray, text: torch.Tensor,
               classes: tuple, seed: int) -> tuple[dict, dict]:
    roc = coherence_roc(emb, patch_labels, seed=seed)
    iou = iou_per_class(conf)
    background = np.where(patch_labels == 0, 0, IGNORE_INDEX)  # (N, T): the background patches only
    parts = {"background": _clean(patch_accuracy(emb, background, text)),
             "objects_among_shapes": _clean(patch_accuracy(emb, patch_labels, text, classes=range(1, len(classes))))}
    row = {"miou": _clean(mean_iou(conf)), "patch_acc": _clean(patch_accuracy(emb, patch_labels, text)),
           "patch_acc_parts": parts,
           "coherence_auc": _clean(roc["auc"]), "pixel_acc": _clean(pixel_accuracy(conf)),
           "per_class_iou": {c: _clean(v) for c, v in zip(classes, iou)}}
    return row, roc


def evaluate_segmenters(dataset: ToyDataset, segmenters: dict, text: torch.Tensor, indices: list[int],
                        batch: int = 50, progress: bool = False, tau: float = 1.0) -> dict[str, tuple[dict, dict]]:
    """Several methods on the given items, each batch through the backbone's trunk once (segment.run_pass)
    -> {method: (metrics dict with seen/unseen parts, ROC of the whole set)}.

    segmenters: {method: Segmenter} of one backbone, image size and shifts. tau: the softmax temperature of the
    attention diagnostic (the PACL head's own)."""
    K = len(dataset.classes)
    methods = list(segmenters)
    conf = {m: {s: np.zeros((K, K), np.int64) for s in SUBSETS} for m in methods}
    embs = {m: [] for m in methods}
    plabels = {s: [] for s in SUBSETS}  # the same for every method: one geometry
    for start in tqdm(range(0, len(indices), batch), desc=f"evaluating {', '.join(methods)}", unit="batch",
                      disable=not progress, leave=False):
        items = [dataset[i] for i in indices[start:start + batch]]
        labels = {s: np.stack([subset_labels(it)[s] for it in items]) for s in SUBSETS}  # (b, H, W) each
        images = np.stack([it["image"] for it in items])  # (b, H, W, 3)
        result = run_pass(list(segmenters.values()), images, [text] * len(methods), embeddings=True)
        grid = result.grid  # (h, w), one geometry
        for m, sg, emb, low in zip(methods, segmenters.values(), result.embeddings, result.low):
            embs[m].append(emb.float().cpu())  # (b, T, D): the plain pass, before any refinement
            pred = sg.masks(low, images, result.inputs)[0].cpu().numpy()  # (b, H, W), the one readout
            for s in SUBSETS:
                conf[m][s] += confusion_matrix(pred, labels[s], K)
        for s in SUBSETS:
            plabels[s].append(patch_majority_labels(labels[s], grid, K))  # (b, T)
    patch_labels = {s: np.concatenate(plabels[s]) for s in SUBSETS}  # (N, T) each
    out = {}
    for m in methods:
        emb = torch.cat(embs[m])  # (N, T, D)
        result, roc_all = None, None
        for s in SUBSETS:
            row, roc = _summarise(conf[m][s], emb, patch_labels[s], text, dataset.classes, seed=SUBSETS.index(s))
            if s == "all":
                result, roc_all = row, roc
                result["attention_on_object"] = attention_on_target(emb, patch_labels[s], text, tau, exclude=(0,))
            else:
                result[s] = row
        out[m] = (result, roc_all)
    return out


def oracle_miou(dataset: ToyDataset, indices: list[int], patch_size: int, image_size: int, shifts: int = 1) -> float:
    """The mIoU of a perfect patch-level segmenter at this grid: every patch scores each class by the share of
    its pixels in that class, upsampled and argmaxed like the real methods (with the same shifted passes). An
    upper bound for them."""
    K = len(dataset.classes)
    conf = np.zeros((K, K), np.int64)
    for i in indices:
        mask = dataset[i]["mask"]  # (H, W)
        H, W = mask.shape
        onehot = F.one_hot(torch.from_numpy(mask).long(), K).permute(2, 0, 1)[None].float()  # (1, K, H, W)
        onehot = F.interpolate(onehot, size=(image_size, image_size), mode="nearest")  # (1, K, S, S)
        share = shifted_scores(lambda x: F.avg_pool2d(x, patch_size), onehot, patch_size, shifts)  # (1, K, S, S)
        pred = F.interpolate(share, size=(H, W), mode="bilinear", align_corners=False)[0].argmax(0)  # (H, W)
        conf += confusion_matrix(pred.numpy(), mask, K)
    return mean_iou(conf)


@torch.no_grad()
def cls_zero_shot(dataset: ToyDataset, backbone, indices: list[int], text: torch.Tensor) -> float | None:
    """CLIP's own image-level skill: share of single-object scenes whose CLS embedding is closest to the
    right shape word (background excluded). Tells whether stage 1 learned shapes at all."""
    singles = [dataset[i] for i in indices if len(dataset.rows[i]["objects"]) == 1]
    if not singles:
        return None
    S = backbone.image_size
    x = torch.cat([backbone.preprocess(it["image"], (S, S)) for it in singles])  # (N, 3, S, S)
    emb = backbone.image_embedding(x).float().cpu()  # (N, D)
    shapes = list(dataset.classes[1:])
    pred = (emb @ text[1:].float().cpu().T).argmax(1)  # (N,)
    truth = torch.tensor([shapes.index(it["objects"][0]["shape"]) for it in singles])
    return float((pred == truth).float().mean())


def evaluate_toy(root, backbone, head=None, methods=("vanilla", "pacl"), limit=None, roc_png=None,
                 progress: bool = False, shifts: int = 1, refine: str | None = None) -> dict:
    """Evaluate `methods` of `backbone` on the toy-world folder `root` (see the module docstring).

    head: a PACL head (path or VisionEmbedder) for 'pacl'; default backbone.default_head.
    limit: use only the first `limit` scenes. roc_png: where to save the coherence ROC figure
    (default ROOT/coherence_roc.png; False for none). shifts: label maps from shifts x shifts shifted passes
    (Segmenter's test-time augmentation); only the mask metrics change, the patch metrics use the plain grid.
    refine: None, "affinity" or "pamr" (Segmenter's refinement); again only the masks change.
    """
    dataset = ToyDataset(root)
    if len(dataset) == 0:
        raise PACLError(f"{root}: the toy-world folder holds no scenes")
    if limit is not None and int(limit) < 1:
        raise PACLError(f"limit must be at least 1 scene, got {limit}")
    if roc_png is not False:  # a figure that cannot be saved fails now, not after the evaluation
        roc_png = Path(roc_png) if roc_png else Path(root) / "coherence_roc.png"
        check_out_folder(roc_png.parent)
    indices = list(range(len(dataset) if limit is None else min(int(limit), len(dataset))))
    words = list(dataset.classes)
    text = backbone.text_embeddings(words)  # (K, D)
    segmenters = {m: Segmenter(backbone, method=m, head=head if m == "pacl" else None, shifts=shifts,
                               refine=refine or "none", mode="whole")  # the whole scene at each method's size
                  for m in methods}
    heads = [sg.head for sg in segmenters.values() if sg.head is not None]
    tau = float((getattr(heads[0], "meta", None) or {}).get("tau") or 1.0) if heads else 1.0
    found = {}  # methods of one geometry share every trunk pass; every attention at the head's tau
    for group in group_by_geometry(segmenters.values()):
        found.update(evaluate_segmenters(dataset, {s.method: s for s in group}, text, indices, progress=progress,
                                         tau=tau))
    out, rocs = {m: found[m][0] for m in segmenters}, {m: found[m][1] for m in segmenters}
    if roc_png is not False:
        save_roc_png(rocs, roc_png, title=f"semantic coherence, {backbone.name}")
    out.update(roc_png=str(roc_png) if roc_png is not False else None, classes=words, words=words,
               templates=list(backbone.templates), n_images=len(indices), shifts=shifts, refine=refine,
               cls_zero_shot=cls_zero_shot(dataset, backbone, indices, text),
               oracle_miou=oracle_miou(dataset, indices, backbone.patch_size, Segmenter(backbone).image_size,
                                       shifts))
    return out


@torch.no_grad()
def _object_patches(backbone, seed: int, n: int, split: str, purity: float, batch: int = 250):
    """Frozen patch tokens of generated scenes -> (tokens of object patches (M, D_v), their shape index (M,))."""
    size = backbone.native_size
    xs, ys = [], []
    for start in range(0, n, batch):
        scenes = [make_scene(seed, i, split, size) for i in range(start, min(n, start + batch))]
        x = torch.cat([backbone.preprocess(s.image, (size, size)) for s in scenes])  # (b, 3, S, S)
        tokens, grid = backbone.patch_tokens(x)  # (b, T, D_v)
        counts = torch.from_numpy(patch_label_counts(np.stack([s.mask for s in scenes]), grid, len(CLASSES)))
        share = counts[..., :-1].float() / counts.sum(-1, keepdim=True)  # (b, T, C), no ignored pixels here
        top, label = share.max(-1)  # (b, T)
        keep = (label > 0) & (top >= purity)
        xs.append(tokens.float().cpu()[keep])
        ys.append(label[keep] - 1)  # shape index
    return torch.cat(xs), torch.cat(ys)


def object_patch_probe(backbone, n_train: int = 3000, n_test: int = 400, train_seed: int = 5,
                       test_seed: int = 1000, hidden: int = 256, steps: int = 3000, purity: float = 0.6) -> dict:
    """How much the frozen patch tokens know about the shape of the object they lie on (diagnostic, uses masks).

    Returns {"mlp": {"train_acc", "test_acc"}, "linear": {...}, "train_patches", "test_patches"}; chance is 1/8.
    """
    train_x, train_y = _object_patches(backbone, train_seed, n_train, "train", purity)
    test_x, test_y = _object_patches(backbone, test_seed, n_test, "test", purity)
    return {"mlp": fit_probe(train_x, train_y, test_x, test_y, hidden=hidden, steps=steps),
            "linear": fit_probe(train_x, train_y, test_x, test_y, hidden=0, steps=steps),
            "train_patches": len(train_y), "test_patches": len(test_y)}
