"""Patch probes (patch accuracy, semantic coherence, attention on target) on hand-made embeddings with known answers."""

import numpy as np
import pytest
import torch

from pacl_core.probes import (
    IGNORE_INDEX,
    attention_on_target,
    coherence_roc,
    fit_probe,
    patch_accuracy,
    patch_label_counts,
    patch_majority_labels,
    save_roc_png,
)


def test_majority_labels_on_a_hand_made_mask():
    mask = np.zeros((1, 4, 4), np.int64)
    mask[0, :2, :2] = 1  # top-left patch all 1
    mask[0, :2, 2:] = [[2, 2], [2, 0]]  # top-right: 3 of 4 are 2
    mask[0, 2:, :2] = IGNORE_INDEX  # bottom-left: ignored
    mask[0, 2:, 2:] = [[3, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX]]  # bottom-right: ignored wins
    got = patch_majority_labels(mask, (2, 2), num_classes=4)
    assert got.tolist() == [[1, 2, IGNORE_INDEX, IGNORE_INDEX]]
    counts = patch_label_counts(mask, (2, 2), num_classes=4)  # (1, 4 patches, 4 classes + ignored)
    assert counts.tolist() == [[[0, 4, 0, 0, 0], [1, 0, 3, 0, 0], [0, 0, 0, 0, 4], [0, 0, 0, 1, 3]]]


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


def test_patch_accuracy_among_some_classes_matches_a_loop():
    g = torch.Generator().manual_seed(3)
    labels = np.random.default_rng(3).integers(0, 5, size=(3, 20))
    labels[0, :4] = IGNORE_INDEX
    emb, text = torch.randn(3, 20, 6, generator=g), torch.randn(5, 6, generator=g)
    classes = [1, 3, 4]
    hits = total = 0
    for b in range(3):
        for t in range(20):
            if labels[b, t] in classes:
                cos = [float(torch.cosine_similarity(emb[b, t], text[k], dim=0)) for k in classes]
                hits += classes[int(np.argmax(cos))] == labels[b, t]
                total += 1
    assert patch_accuracy(emb, labels, text, classes=classes) == hits / total
    emb, centres = _clustered(np.where(labels == IGNORE_INDEX, 0, labels))
    centres[0] = centres[2] * 2  # "background" steals class 2's patches unless it is left out
    assert patch_accuracy(emb, labels, centres, classes=[1, 2]) == 1.0
    assert patch_accuracy(emb, np.where(labels == 2, 2, IGNORE_INDEX), centres) == 0.0
    assert np.isnan(patch_accuracy(emb, labels, centres, classes=[7]))


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


def test_attention_on_target_matches_a_per_pair_loop():
    labels = np.random.default_rng(1).integers(0, 4, size=(5, 16))
    labels[0] = 0  # an image with the background only: no pair from it
    emb, centres = _clustered(labels, noise=0.8, seed=1)
    labels[1, :3] = IGNORE_INDEX
    got = attention_on_target(emb, labels, centres, tau=0.2, exclude=(0,))
    masses, areas = [], []
    for b in range(5):
        valid = labels[b] != IGNORE_INDEX
        for k in range(1, 4):
            own = torch.from_numpy(labels[b] == k)
            if not own.any():
                continue
            cos = torch.nn.functional.cosine_similarity(emb[b], centres[k][None], dim=-1)  # (T,)
            att = torch.softmax(cos / 0.2, dim=0)
            masses.append(float(att[own].sum()))
            areas.append(float(own.sum()) / float(valid.sum()))
    assert got["pairs"] == len(masses) > 0
    assert abs(got["attention"] - np.mean(masses)) < 1e-6 and abs(got["area"] - np.mean(areas)) < 1e-6


def test_attention_on_target_is_near_one_for_aligned_and_uniform_for_random_text():
    labels = np.zeros((4, 36), np.int64)
    labels[:, :6] = 1  # one sixth of every image is class 1
    emb, centres = _clustered(labels, noise=0.05)
    aligned = attention_on_target(emb, labels, centres, tau=0.05, exclude=(0,))
    assert aligned["attention"] > 0.99 and abs(aligned["area"] - 1 / 6) < 1e-6
    flat = attention_on_target(emb, labels, centres, tau=1e6, exclude=(0,))  # huge tau: uniform attention
    assert abs(flat["attention"] - 1 / 6) < 1e-4
    assert attention_on_target(emb, np.zeros_like(labels), centres, tau=0.1, exclude=(0,))["pairs"] == 0


@pytest.mark.slow
def test_probe_learns_separable_features_and_not_random_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (600,), generator=g)
    x = torch.nn.functional.one_hot(y, 4).float() * 3 + 0.5 * torch.randn(600, 4, generator=g)  # (600, 4)
    x = torch.cat([x, torch.randn(600, 12, generator=g)], dim=1)  # (600, 16): 12 noise dimensions
    for hidden in (0, 32):
        got = fit_probe(x[:400], y[:400], x[400:], y[400:], hidden=hidden, steps=300)
        assert got["test_acc"] > 0.95, (hidden, got)
    shuffled = y[torch.randperm(600, generator=g)]
    got = fit_probe(x[:400], shuffled[:400], x[400:], shuffled[400:], hidden=64, steps=600)
    assert got["test_acc"] < 0.45 < got["train_acc"], got  # memorises noise, predicts chance (0.25) held out
