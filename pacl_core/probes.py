"""Patch-level probes from the PACL paper, for any (B, T, D) patch embeddings with per-patch labels.

- `patch_majority_labels`: pixel label maps -> the majority label of every patch of a grid (from
  `patch_label_counts`, each label's pixel count per patch).
- `patch_accuracy` (Table 1): each patch is classified by its cosine to the class-name text embeddings
  and compared with its majority label.
- `coherence_roc` (Section 4, "semantic coherence"): how well the cosine of two patch embeddings predicts
  whether the two patches have the same label, as a ROC curve and its AUC, over randomly sampled pairs.
- `attention_on_target`: where a(x,y) puts its mass when y names a class in the image: the share of the
  attention on that class's own patches, beside the share of the patches it covers (uniform attention).
- `fit_probe`: a diagnostic, not part of PACL. A small classifier trained *with labels* on frozen features;
  its held-out accuracy bounds what any per-patch head (PACL's e_v included) can read from those features.
- `save_roc_png`: one figure with several ROC curves.
Labels equal to `ignore_index` (or negative) are left out everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve

from pacl_core.pacl import patch_attention

IGNORE_INDEX = 255


def patch_label_counts(labels: np.ndarray, grid: tuple[int, int], num_classes: int) -> np.ndarray:
    """(B, H, W) pixel labels -> (B, h*w, num_classes + 1) pixel count of each label in each patch.

    Pixel (y, x) belongs to patch (y*h//H, x*w//W); ignored pixels (negative, or >= num_classes) are counted
    in the last column.
    """
    B, H, W = labels.shape
    h, w = grid
    lab = labels.astype(np.int64)
    lab = np.where((lab < 0) | (lab >= num_classes), num_classes, lab)  # (B, H, W), ignored -> num_classes
    py = (np.arange(H) * h // H)[:, None]  # (H, 1)
    px = (np.arange(W) * w // W)[None, :]  # (1, W)
    patch = (np.arange(B)[:, None, None] * (h * w) + py * w + px)  # (B, H, W) global patch index
    C = num_classes + 1
    return np.bincount((patch * C + lab).ravel(), minlength=B * h * w * C).reshape(B, h * w, C)  # (B, T, C)


def patch_majority_labels(labels: np.ndarray, grid: tuple[int, int], num_classes: int,
                          ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(B, H, W) pixel labels -> (B, h*w) int64 majority label per patch, ignore_index where ignored pixels win.

    Ignored pixels vote as one extra class (see `patch_label_counts`).
    """
    major = patch_label_counts(labels, grid, num_classes).argmax(-1)  # (B, T)
    return np.where(major == num_classes, ignore_index, major)


def _valid(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return (labels >= 0) & (labels != ignore_index)


def patch_accuracy(patch_emb: torch.Tensor, labels, text_emb: torch.Tensor,
                   ignore_index: int = IGNORE_INDEX, classes=None) -> float:
    """Share of (non-ignored) patches whose most similar class name is their label.

    patch_emb (B, T, D), labels (B, T) class indices into text_emb (K, D). With `classes` (indices), only the
    patches labelled with one of them count, and only those class names compete (e.g. the shapes without
    "background": how well object patches tell their shape).
    """
    labels = torch.as_tensor(np.asarray(labels)).long()
    assert patch_emb.shape[:2] == labels.shape, f"{tuple(patch_emb.shape)} embeddings vs {tuple(labels.shape)} labels"
    keep = _valid(labels, ignore_index)  # (B, T)
    names = torch.arange(len(text_emb)) if classes is None else torch.as_tensor(list(classes)).long()  # (K',)
    keep &= torch.isin(labels, names)
    if not keep.any():
        return float("nan")
    emb = F.normalize(patch_emb[keep].float(), dim=-1)  # (N, D)
    pred = names[(emb @ F.normalize(text_emb[names].float(), dim=-1).T).argmax(-1)]  # (N,) class index
    return float((pred == labels[keep]).float().mean())


def attention_on_target(patch_emb: torch.Tensor, labels, text_emb: torch.Tensor, tau: float,
                        exclude: tuple[int, ...] = (), ignore_index: int = IGNORE_INDEX) -> dict:
    """For every (image, class present in it) pair: the attention a(x, class name) puts on the class's patches.

    patch_emb (B, T, D), labels (B, T) class indices into text_emb (K, D). Returns the means over the pairs of
    "attention" (mass on the target's patches) and "area" (the target's share of the patches, which is what
    uniform attention would give), and "pairs". Classes in `exclude` (e.g. the background) are skipped.
    """
    labels = torch.as_tensor(np.asarray(labels)).long()
    assert patch_emb.shape[:2] == labels.shape, f"{tuple(patch_emb.shape)} embeddings vs {tuple(labels.shape)} labels"
    K = text_emb.shape[0]
    valid = _valid(labels, ignore_index) & (labels < K)  # (B, T)
    onehot = F.one_hot(torch.where(valid, labels, 0), K).float() * valid[..., None]  # (B, T, K)
    att = patch_attention(patch_emb.float(), text_emb.float(), tau)  # (B, K, T)
    mass = torch.einsum("bkt,btk->bk", att, onehot)  # (B, K) attention on each class's own patches
    area = onehot.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)  # (B, K)
    present = onehot.sum(1) > 0  # (B, K)
    present[:, list(exclude)] = False
    if not present.any():
        return {"attention": None, "area": None, "pairs": 0}
    return {"attention": float(mass[present].mean()), "area": float(area[present].mean()),
            "pairs": int(present.sum())}


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
              hidden: int = 256, steps: int = 3000, batch: int = 256, lr: float = 1e-3, seed: int = 0) -> dict:
    """Train a classifier on (N, D) features with (N,) int labels; return its train and test accuracy.

    hidden=0 gives a linear classifier, otherwise one hidden ReLU layer of that width. Adam, seeded.
    """
    assert len(train_x) == len(train_y) > 0 and len(test_x) == len(test_y) > 0, "need labelled train and test sets"
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    D, K = train_x.shape[1], int(max(train_y.max(), test_y.max())) + 1
    net = torch.nn.Linear(D, K) if hidden == 0 else torch.nn.Sequential(
        torch.nn.Linear(D, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, K))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    train_x, test_x = train_x.float(), test_x.float()
    for _ in range(steps):
        idx = torch.randint(0, len(train_y), (min(batch, len(train_y)),), generator=g)
        loss = F.cross_entropy(net(train_x[idx]), train_y[idx])  # (b, K) logits
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = lambda x, y: float((net(x).argmax(1) == y).float().mean())  # noqa: E731
        return {"train_acc": acc(train_x, train_y), "test_acc": acc(test_x, test_y)}


def sample_pairs(n_items: int, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n_pairs random (i, j) index pairs with i != j from range(n_items), seeded."""
    assert n_items >= 2, "need at least two patches to form a pair"
    g = np.random.default_rng(seed)
    i = g.integers(0, n_items, n_pairs)
    j = (i + g.integers(1, n_items, n_pairs)) % n_items  # never equal to i
    return i, j


def coherence_roc(patch_emb: torch.Tensor, labels, n_pairs: int = 100_000, seed: int = 0,
                  ignore_index: int = IGNORE_INDEX) -> dict:
    """Semantic coherence: ROC of patch-patch cosine for predicting 'same label', over random patch pairs.

    patch_emb (B, T, D), labels (B, T); pairs are drawn among all non-ignored patches of all images.
    Returns {"auc", "fpr", "tpr", "n_pairs", "positive_share"}; auc is NaN when only one label occurs.
    """
    labels = torch.as_tensor(np.asarray(labels)).long()
    assert patch_emb.shape[:2] == labels.shape, f"{tuple(patch_emb.shape)} embeddings vs {tuple(labels.shape)} labels"
    keep = _valid(labels, ignore_index)  # (B, T)
    emb = F.normalize(patch_emb[keep].float(), dim=-1)  # (N, D)
    lab = labels[keep].numpy()  # (N,)
    if len(lab) < 2 or len(np.unique(lab)) < 2:
        return {"auc": float("nan"), "fpr": [], "tpr": [], "n_pairs": 0, "positive_share": float("nan")}
    i, j = sample_pairs(len(lab), n_pairs, seed)
    cos = (emb[torch.from_numpy(i)] * emb[torch.from_numpy(j)]).sum(-1).numpy()  # (n_pairs,)
    same = lab[i] == lab[j]
    if same.all() or not same.any():
        return {"auc": float("nan"), "fpr": [], "tpr": [], "n_pairs": n_pairs, "positive_share": float(same.mean())}
    fpr, tpr, _ = roc_curve(same, cos)
    keep_pts = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).round().astype(int))  # thin the curve
    return {"auc": float(roc_auc_score(same, cos)), "fpr": fpr[keep_pts].tolist(), "tpr": tpr[keep_pts].tolist(),
            "n_pairs": n_pairs, "positive_share": float(same.mean())}


def save_roc_png(curves: dict[str, dict], path, title: str = "semantic coherence of patch embeddings") -> Path:
    """Plot {name: coherence_roc(...)} as ROC curves in one PNG."""
    import matplotlib  # local: pyplot needs its headless backend chosen before it is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    for name, roc in curves.items():
        ax.plot(roc["fpr"], roc["tpr"], label=f"{name} (AUC {roc['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
