"""The "Train PACL yourself" tab as plain Python: live toy stage 2, and the heads each browser session trains.

Nothing here imports gradio, so it is tested by calling it directly. `train(...)` checks its inputs, runs
pacl_core.toy.live.live_training on the embedded toy CLIP and yields a `TrainView` (display values) at every
snapshot. `Trainings` holds a stop flag per browser session (the Stop button, a closed tab) and the heads each
session trained: each is saved as safetensors + JSON in a private temporary folder (never in the project) and
added to the model registry under a label only that session's page is shown. demo/ui.py lets one training run at
a time (Gradio's queue shows the others their place).
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pacl_core.checkpoint import save_head
from pacl_core.errors import PACLError
from pacl_core.toy.live import CHECK_SEED, LiveConfig, LiveSnapshot, check_scene, live_training
from pacl_core.toy.train import ToyTrainConfig
from pacl_core.toy.world import CLASSES, make_scene
from pacl_core.viz import draw_overlay, heatmap_overlay

from .drawing import plot_lines
from .folders import PrivateFolder
from .handlers import load_model
from .models import TOY_LABEL, ModelChoice

TRAIN_MODEL = TOY_LABEL  # live training runs on the embedded toy CLIP
MIN_STEPS, MAX_STEPS = 10, 1000
HEAD_LABEL = "Your PACL head {n} ({steps} steps, check mIoU {miou:.2f}, {tag})"


@dataclass
class TrainView:
    """What the training tab shows at one snapshot."""

    status: str  # Markdown: step, time, the check-set numbers
    loss_plot: np.ndarray  # the loss curve
    checks_plot: np.ndarray  # PACL mIoU / patch accuracy and vanilla mIoU at every check
    pacl_mask: np.ndarray  # the chosen scene's mask by the head so far, with its legend
    pacl_heat: np.ndarray  # the chosen word's heatmap by the head so far
    vanilla_mask: np.ndarray  # the same two by vanilla CLIP: they never change
    vanilla_heat: np.ndarray
    done: bool
    model_label: str | None = None  # the trained head's entry in the Model list, once done
    files: list[str] | None = None  # its safetensors + JSON, once done


class Trainings:
    """The server's live trainings: a stop flag per browser session, and the heads each session trained."""

    def __init__(self, live: LiveConfig | None = None):
        self.live = live or LiveConfig()  # the settings of every run but its steps and seed
        self._lock = threading.Lock()
        self._stops: dict[str, threading.Event] = {}
        self._heads: dict[str, list[str]] = {}  # session -> registry labels of its heads
        self._files: dict[str, list[Path]] = {}
        self._closed: set[str] = set()
        self.folder = PrivateFolder("pacl-demo-heads-")  # where trained heads are saved

    def start(self, session: str) -> threading.Event:
        with self._lock:
            self._closed.discard(session)
            stop = self._stops[session] = threading.Event()
            return stop

    def finish(self, session: str, stop: threading.Event) -> None:
        with self._lock:
            if self._stops.get(session) is stop:
                del self._stops[session]

    def running(self) -> list[str]:
        """Sessions whose training is under way."""
        with self._lock:
            return list(self._stops)

    def stop(self, session: str) -> bool:
        """Ask this session's training to stop after its current step; False if it has none."""
        with self._lock:
            stop = self._stops.get(session)
        if stop is not None:
            stop.set()
        return stop is not None

    def keep(self, registry, session: str, snap: LiveSnapshot, backbone) -> tuple[str | None, list[str]]:
        """Save a finished run's head and add it to the registry for this session: (label, [files])."""
        with self._lock:
            if session in self._closed:  # the tab was closed while it trained: nobody to give it to
                return None, []
            n = len(self._heads.get(session, [])) + 1
        tag = uuid.uuid4().hex[:8]
        path = self.folder() / f"pacl-toy-head-{tag}.safetensors"
        info = {"stage": "pacl only, live in the demo", "steps": snap.step, "live": snap.config,
                "check": snap.checks[-1], "seconds": round(snap.seconds, 1)}
        save_head(path, snap.head, backbone, tau=ToyTrainConfig.pacl_tau, logit_scale=backbone.logit_scale,
                  training=info)
        label = HEAD_LABEL.format(n=n, steps=snap.step, miou=snap.checks[-1]["miou"], tag=tag)
        registry.add(ModelChoice(label, "toy", head=str(path)), owner=session)
        with self._lock:
            self._heads.setdefault(session, []).append(label)
            self._files.setdefault(session, []).extend([path, path.with_suffix(".json")])
        return label, [str(path), str(path.with_suffix(".json"))]

    def labels_for(self, registry, session: str) -> list[str]:
        """The Model list one session sees: everything but the heads other sessions trained."""
        return registry.labels_for(session)

    def files(self, session: str) -> list[Path]:
        """The head files this session's runs wrote (what `close` deletes)."""
        with self._lock:
            return list(self._files.get(session, []))

    def close(self, registry, session: str) -> None:
        """A browser tab went away: stop its training, drop its heads from the registry and the disk."""
        self.stop(session)
        with self._lock:
            self._closed.add(session)
            labels, files = self._heads.pop(session, []), self._files.pop(session, [])
        for label in labels:
            registry.remove(label)
        for path in files:
            path.unlink(missing_ok=True)


# ---- input checks ------------------------------------------------------------------------------------------
def check_scene_index(scene, n: int = LiveConfig.check) -> int:
    try:
        k = int(scene)
    except (TypeError, ValueError):
        raise PACLError(f"check scene '{scene}' must be a number from 0 to {n - 1}") from None
    if not 0 <= k < n:
        raise PACLError(f"check scene {k} must be from 0 to {n - 1}")
    return k


def check_word(word) -> str:
    word = str(word or "").strip()
    if word not in CLASSES:
        raise PACLError(f"pick the word to watch among the toy world's: {', '.join(CLASSES)}")
    return word


def check_steps(steps) -> int:
    try:
        n = int(steps)
    except (TypeError, ValueError):
        raise PACLError(f"training steps '{steps}' must be a whole number from {MIN_STEPS} to {MAX_STEPS}") from None
    if not MIN_STEPS <= n <= MAX_STEPS:
        raise PACLError(f"training steps must be from {MIN_STEPS} to {MAX_STEPS}, got {n}")
    return n


def scene_preview(scene) -> np.ndarray:
    """The chosen check scene, as training will show it."""
    return check_scene(check_scene_index(scene))


def scene_word(scene) -> str:
    """A word worth watching in a check scene: its first object's shape."""
    return make_scene(CHECK_SEED, check_scene_index(scene), "test").objects[0]["shape"]


# ---- the run -----------------------------------------------------------------------------------------------
def _views(seg, word: str) -> tuple[np.ndarray, np.ndarray]:
    k = seg.words.index(word)
    return draw_overlay(seg), heatmap_overlay(seg.image, seg.heatmaps[k], title=word)


def status_line(snap: LiveSnapshot, label: str | None) -> str:
    c, v = snap.checks[-1], snap.vanilla
    numbers = (f"check set ({snap.config['check']} held-out scenes): PACL mIoU **{c['miou']:.3f}**, patch accuracy "
               f"{c['patch_acc']:.3f} · vanilla CLIP mIoU {v['miou']:.3f}, patch accuracy {v['patch_acc']:.3f} "
               "(it never changes: CLIP stays frozen)")
    if snap.step == 0:
        pairs = ", ".join(f"“{c}”" for c in snap.example_captions[:3])
        head = (f"Made {snap.config['pool']} training scenes and their frozen CLIP features in "
                f"{snap.prepare_seconds:.1f} s; e_v starts from random weights and learns from pairs of a scene "
                f"and one caption, such as {pairs}.")
    else:
        head = f"**Step {snap.step} / {snap.total}** · {snap.seconds:.1f} s."
    line = f"{head} {numbers}"
    if snap.done:
        how = f"Stopped at step {snap.step}." if snap.stopped else f"Done in {snap.seconds:.1f} s."
        kept = (f" Your head is in the **Model** list as “{label}”: pick it in *Compare methods* or the teaching "
                "view (for this browser tab only), or download it below." if label else "")
        line = f"{how} {numbers}.{kept}"
    return line


def to_view(snap: LiveSnapshot, word: str, label: str | None = None, files: list[str] | None = None) -> TrainView:
    pacl_mask, pacl_heat = _views(snap.pacl_view, word)
    vanilla_mask, vanilla_heat = _views(snap.vanilla_view, word)
    return TrainView(status_line(snap, label), loss_picture(snap), checks_picture(snap), pacl_mask, pacl_heat,
                     vanilla_mask, vanilla_heat, snap.done, label, files)


def loss_picture(snap: LiveSnapshot) -> np.ndarray:
    steps = list(range(1, len(snap.losses) + 1))
    return plot_lines({"PACL loss": (steps, snap.losses)}, "PACL loss (training batches)", "step", "loss")


def checks_picture(snap: LiveSnapshot) -> np.ndarray:
    steps = [c["step"] for c in snap.checks]
    lines = {"PACL mIoU": (steps, [c["miou"] for c in snap.checks]),
             "PACL patch accuracy": (steps, [c["patch_acc"] for c in snap.checks]),
             "vanilla CLIP mIoU": (steps, [snap.vanilla["miou"]] * len(steps))}
    return plot_lines(lines, f"{snap.config['check']} held-out check scenes", "step", "", ylim=(0, 1))


def train(registry, trainings: Trainings, session: str, scene=0, word=None, steps=LiveConfig.steps, seed=0,
          live: LiveConfig | None = None):
    """Train a toy PACL head live for one browser session; yields a TrainView at every snapshot. Every input is
    checked before anything runs; the finished (or stopped) head joins this session's Model list.
    live: the other settings (pool, check scenes, how often to measure); default trainings.live."""
    live = live or trainings.live
    scene, steps = check_scene_index(scene, live.check), check_steps(steps)
    word = check_word(word or scene_word(scene))
    try:
        seed = int(seed or 0)
    except (TypeError, ValueError):
        raise PACLError(f"seed '{seed}' must be a whole number") from None
    if TRAIN_MODEL not in registry.labels:
        registry.add(ModelChoice(TRAIN_MODEL, "toy"))
    load_model(registry, TRAIN_MODEL)
    backbone = registry.backbone(TRAIN_MODEL)
    cfg = dataclasses.replace(live, steps=steps, seed=seed)
    stop = trainings.start(session)
    try:
        for snap in live_training(backbone, cfg, scene, CLASSES, stop=stop.is_set, lock=registry.lock(TRAIN_MODEL)):
            label, files = trainings.keep(registry, session, snap, backbone) if snap.done else (None, None)
            yield to_view(snap, word, label, files)
    finally:
        trainings.finish(session, stop)
