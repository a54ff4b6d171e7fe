"""Patch probes (patch accuracy, semantic coherence) on hand-made embeddings with known answers."""

import numpy as np
import torch

from pacl_core.probes import IGNORE_INDEX, coherence_roc, patch_accuracy, patch_majority_labels, save_roc_png


def test_majority_labels_on_a_hand_made_mask():
    mask = np.zeros((1, 4, 4), np.int64)
    mask[0, :2, :2] = 1  # top-left patch all 1
    mask[0, :2, 2:] = [[2, 2], [2, 0]]  # top-right: 3 of 4 are 2
    mask[0, 2:, :2] = IGNORE_INDEX  # bottom-left: ignored
    mask[0, 2:, 2:] = [[3, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX]]  # bottom-right: ignored wins
    got = patch_majority_labels(mask, (2, 2), num_classes=4)
    assert got.tolist() == [[1, 2, IGNORE_INDEX, IGNORE_INDEX]]


def _clustered(labels, dim=8, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[: int(labels.max()) + 1]  # (K, dim) orthogonal class directions
    emb = centres[torch.as_tensor(labels)] + noise * torch.randn(*labels.shape, dim, generator=g)
    return emb, centres


def test_patch_accuracy_is_one_for_aligned_and_low_for_shuffled_text():
    labels = np.random.default_rng(0).integers(0, 4, size=(3, 16))
    emb, centres = _clustered(labels)
    assert patch_accuracy(emb, labels, centres) == 1.0
    assert patch_accuracy(emb, labels, centres[[1, 2, 3, 0]]) == 0.0
    labels[0] = IGNORE_INDEX  # ignored patches do not count
    assert patch_accuracy(emb, labels, centres) == 1.0


def test_coherence_auc_separates_clustered_from_random_embeddings():
    labels = np.random.default_rng(1).integers(0, 5, size=(4, 32))
    emb, _ = _clustered(labels)
    good = coherence_roc(emb, labels, n_pairs=5000)
    assert good["auc"] > 0.99 and 0 < good["positive_share"] < 1
    rand = coherence_roc(torch.randn(4, 32, 8), labels, n_pairs=5000)
    assert 0.4 < rand["auc"] < 0.6


def test_coherence_handles_a_single_label(tmp_path):
    labels = np.zeros((2, 8), np.int64)
    assert np.isnan(coherence_roc(torch.randn(2, 8, 4), labels)["auc"])
    labels = np.arange(16).reshape(2, 8) % 3
    roc = coherence_roc(_clustered(labels)[0], labels, n_pairs=500)
    assert len(roc["fpr"]) == len(roc["tpr"]) > 2
    png = save_roc_png({"a": roc}, tmp_path / "roc.png")
    assert png.is_file() and png.stat().st_size > 1000
