"""Segmentation metrics from a confusion matrix: mIoU, per-class IoU, pixel accuracy."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction; ignored pixels skipped."""
    assert pred.shape == label.shape, f"prediction {pred.shape} and label {label.shape} differ"
    label = label.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel()
    keep = (label != ignore_index) & (label >= 0) & (label < num_classes)
    assert ((pred[keep] >= 0) & (pred[keep] < num_classes)).all(), "prediction outside [0, num_classes)"
    idx = label[keep] * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) per class; NaN for classes absent from both prediction and ground truth."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """Mean over classes that occur in the ground truth or the prediction (the usual mIoU)."""
    iou = iou_per_class(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(conf: np.ndarray) -> float:
    total = conf.sum()
    return float(np.diag(conf).sum() / total) if total else float("nan")
