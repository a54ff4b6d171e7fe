"""Watch PACL learn: stage 2 on the frozen toy CLIP, step by step, measured on held-out scenes as it goes.

`live_training(backbone, LiveConfig(), scene=k, words=CLASSES)` is a generator of `LiveSnapshot`s. It trains a
PACL head (e_v) from a random start with the toy recipe's stage 2 (`toytrain.pacl_training`: PACLLoss on scenes
paired with *mentions*, short captions that each name one thing; never a mask) and, every `every` steps, measures
it on a small held-out check set: one-pass mIoU and patch accuracy, as `toyeval.evaluate_toy` computes them (the
check set's masks are used only for these numbers). Each snapshot also carries the segmentation of one chosen
check scene by the head so far and by vanilla CLIP, which does not change, since stage 2 never touches CLIP.
Stop it by passing `stop` (a callable polled after every step) or by closing the generator.

The training scenes and their frozen features are cached for the last tower and setting asked for, so a second
run starts at once. `bench/toy_live.py` measures the defaults (time and check-set mIoU).
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from pacl_core.errors import PACLError
from pacl_core.metrics import confusion_matrix, mean_iou
from pacl_core.pacl import VisionEmbedder
from pacl_core.probes import patch_accuracy, patch_majority_labels
from pacl_core.segment import Segmenter
from pacl_core.toy.train import ToyTrainConfig, new_head, pacl_training, stage2_inputs, stage2_pool
from pacl_core.toy.world import CLASSES, make_scene

CHECK_SEED = 3000  # the check scenes: test split, seed 3000 (the final evaluation uses seed 1000)


@dataclass(frozen=True)
class LiveConfig:
    """The live run's knobs; everything else is the shipped stage-2 recipe (ToyTrainConfig). The defaults are
    chosen to finish within a minute on 2 cores: half the steps on a third of the scenes, at 5x the learning rate
    (bench/toy_live.py; docs/toy-training.md)."""

    steps: int = 500
    pool: int = 2000  # training scenes, each with its mentions
    check: int = 40  # held-out check scenes
    every: int = 25  # measure every this many steps
    seed: int = 0
    lr: float = 1e-2

    def train_config(self) -> ToyTrainConfig:
        size = ToyTrainConfig().image_size
        return ToyTrainConfig(seed=self.seed, pacl_steps=self.steps, pacl_lr=self.lr, threads=1,
                              clip_phases=((size, 0, self.pool),))  # stage 2's pool: one phase, no stage 1


@dataclass
class CheckSet:
    """Held-out scenes with their frozen patch tokens; the masks are used only to measure."""

    images: np.ndarray  # (n, H, W, 3) uint8
    masks: np.ndarray  # (n, H, W) class index
    tokens: torch.Tensor  # (n, T, D_v) float32, as the Segmenter computes them
    patch_labels: np.ndarray  # (n, T) majority class of each patch
    text: torch.Tensor  # (K, D) the class words' embeddings
    grid: tuple[int, int]


@dataclass
class LiveSnapshot:
    """Where the live run stands."""

    step: int
    total: int
    losses: list[float]  # every step's PACL loss so far
    checks: list[dict]  # {"step", "miou", "patch_acc"} at each measurement, step 0 (the random head) first
    vanilla: dict  # {"miou", "patch_acc"} of vanilla CLIP on the check set: constant
    pacl_view: object  # the chosen scene segmented with the head so far (a pacl_core Segmentation)
    vanilla_view: object  # and with vanilla CLIP
    head: VisionEmbedder  # a copy of the head at this step
    example_captions: list[str]  # a few of the mentions it trains on
    seconds: float  # since the run started, preparation included
    prepare_seconds: float  # of which generating the scenes and their frozen features
    done: bool = False  # the last snapshot: all steps ran, or it was stopped
    stopped: bool = False
    config: dict = field(default_factory=dict)


@torch.no_grad()
def make_check_set(backbone, n: int, seed: int = CHECK_SEED) -> CheckSet:
    """n held-out test-split scenes at the backbone's native size, with everything the measurements need."""
    size = backbone.native_size
    scenes = [make_scene(seed, i, "test", size) for i in range(n)]
    images = np.stack([s.image for s in scenes])  # (n, H, W, 3)
    masks = np.stack([s.mask for s in scenes])  # (n, H, W)
    x = backbone.preprocess_batch(images, images.shape[1:3])  # (n, 3, S, S), as the segmenter sees them
    tokens, grid = backbone.patch_tokens(x)  # (n, T, D_v)
    text = backbone.text_embeddings(list(CLASSES)).float().cpu()  # (K, D)
    labels = patch_majority_labels(masks, grid, len(CLASSES))  # (n, T)
    return CheckSet(images, masks, tokens.float().cpu(), labels, text, tuple(grid))


@torch.no_grad()
def measure(segmenter, emb: torch.Tensor, check: CheckSet) -> dict:
    """Patch embeddings (n, T, D) of the check scenes -> one-pass mIoU and patch accuracy, read out by the
    segmenter's own pipeline (Segmenter.masks), as evaluate_toy does."""
    scores = segmenter.scores_from_embeddings(emb, check.grid, check.text)  # (n, K, h, w)
    pred = segmenter.masks(scores, check.images)[0].numpy()  # (n, H, W)
    conf = confusion_matrix(pred, check.masks, len(check.text))
    return {"miou": mean_iou(conf), "patch_acc": patch_accuracy(emb, check.patch_labels, check.text)}


_cache: dict = {}
_cache_lock = threading.Lock()


def _prepared(backbone, cfg: LiveConfig) -> tuple[torch.Tensor, torch.Tensor, list[str], CheckSet]:
    """Frozen features of the training pool and the check set; cached for the last (tower, setting)."""
    key = (id(backbone), backbone.pretrained, cfg.seed, cfg.pool, cfg.check)
    with _cache_lock:
        if key not in _cache:
            images, draws = stage2_pool(cfg.train_config(), progress=False)
            tokens, text = stage2_inputs(backbone, images, draws, progress=False)  # (N, T, D_v), (draws, N, D)
            examples = [draws[0][i] for i in range(0, min(len(images), 40), 8)]
            _cache.clear()
            _cache[key] = (tokens, text, examples, make_check_set(backbone, cfg.check))
        return _cache[key]


def check_scene(index: int, size: int = ToyTrainConfig().image_size) -> np.ndarray:
    """Check scene `index` as an (H, W, 3) uint8 image (what live_training(scene=index) shows)."""
    return make_scene(CHECK_SEED, index, "test", size).image


def live_training(backbone, cfg: LiveConfig | None = None, scene: int = 0, words=CLASSES, stop=None, lock=None):
    """Train a toy PACL head step by step, yielding a LiveSnapshot before the first step and every cfg.every
    steps (and at the end). scene: which check scene to show; words: the vocabulary it is segmented with.
    lock: held whenever the backbone runs (its caches are not thread-safe), never during the training steps."""
    cfg = cfg or LiveConfig()
    if not 0 <= scene < cfg.check:
        raise PACLError(f"check scene {scene} does not exist: pick 0 to {cfg.check - 1}")
    if cfg.steps < 1 or cfg.every < 1 or cfg.pool < 1:
        raise PACLError("live training needs at least 1 step, 1 training scene and a measurement every >= 1 steps")
    lock = lock or contextlib.nullcontext()
    t0 = time.perf_counter()
    with lock:
        tokens, text, examples, check = _prepared(backbone, cfg)
        vanilla_view = Segmenter(backbone, "vanilla")(check.images[scene], list(words))
    prepare = time.perf_counter() - t0
    tcfg = cfg.train_config()
    plain = Segmenter(backbone, "vanilla")  # the readout of every check: one whole pass, no background
    vanilla = measure(plain, backbone.vanilla_patch_embeddings(check.tokens), check)
    head, losses, checks = new_head(backbone, tcfg), [], []

    def snapshot(step: int, done: bool = False, stopped: bool = False) -> LiveSnapshot:
        kept = copy.deepcopy(head).eval().requires_grad_(False)
        with torch.no_grad():
            checks.append({"step": step, **measure(plain, kept(check.tokens), check)})
        with lock:
            view = Segmenter(backbone, "pacl", head=kept)(check.images[scene], list(words))
        return LiveSnapshot(step, tcfg.pacl_steps, list(losses), list(checks), vanilla, view, vanilla_view, kept,
                            examples, time.perf_counter() - t0, prepare, done, stopped, config=vars(cfg).copy())

    yield snapshot(0)
    for st in pacl_training(head, tokens, text, backbone.logit_scale, tcfg, progress=False):
        losses.append(st.loss)
        if stop is not None and stop():
            yield snapshot(st.step, done=True, stopped=True)
            return
        if st.step == st.total:
            yield snapshot(st.step, done=True)
        elif st.step % cfg.every == 0:
            yield snapshot(st.step)
