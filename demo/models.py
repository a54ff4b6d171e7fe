"""The demo's model registry: which models a user can pick, each loaded once, lazily, and cached.

Choices are the embedded toy model, OpenAI's ViT-B/16, and every PACL head found in checkpoints/ (a
`NAME.safetensors` with its `NAME.json` beside it). Backbones are shared between choices that use the same one;
inference on one backbone is serialised by its lock, since its caches are not thread-safe.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from pacl_core.backbone import load_backbone, parse_model_spec, weights_status
from pacl_core.errors import PACLError
from pacl_core.toymodel import CONFIG_NAME as TOY_CONFIG

log = logging.getLogger(__name__)

TOY_LABEL = "Toy world (embedded, offline)"
VIT_LABEL = "ViT-B/16 (OpenAI CLIP)"
VIT_SPEC = "vit-b-16"
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
SEGMENTER_CACHE_SIZE = 64


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model dropdown: a backbone spec for load_backbone and, optionally, a PACL head file."""

    label: str
    spec: str
    head: str | None = None  # None: the backbone's own head (the toy model ships one), if any


def spec_for_head(meta: dict) -> str:
    """The load_backbone spec of the backbone a head's metadata names."""
    name, tag = meta.get("backbone"), meta.get("pretrained")
    if not name:
        raise PACLError("its metadata does not name a backbone")
    if name == TOY_CONFIG:
        return "toy"
    if name == "ViT-B-16-quickgelu" and tag == "openai":
        return VIT_SPEC
    return f"{name}:{tag or 'none'}"


def head_choice(path: Path) -> ModelChoice:
    """A head file -> a dropdown entry; PACLError if it has no readable PACL-head metadata beside it."""
    meta_file = path.with_suffix(".json")
    if not meta_file.is_file():
        raise PACLError(f"{path.name}: its metadata file {meta_file.name} is missing")
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError):
        raise PACLError(f"{meta_file.name}: not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != "pacl-head":
        raise PACLError(f"{path.name}: not a PACL head checkpoint")
    spec = spec_for_head(meta)
    shown = {"toy": "toy world", VIT_SPEC: "ViT-B/16"}.get(spec, spec)
    return ModelChoice(label=f"PACL head: {path.stem} ({shown})", spec=spec, head=str(path))


def checkpoint_choices(folder: Path = CHECKPOINT_DIR) -> list[ModelChoice]:
    """Every usable PACL head in `folder`; unusable files are skipped with a log line."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    choices = []
    for path in sorted(folder.glob("*.safetensors")):
        try:
            choices.append(head_choice(path))
        except PACLError as e:
            log.warning("checkpoints: skipping %s", e)
    return choices


def choice_for_request(requested: str) -> ModelChoice:
    """What `--model` asked for: 'toy', 'vit-b-16', a head .safetensors file, or any backbone spec."""
    key = requested.strip()
    if key.lower() == "toy" or key == TOY_LABEL:
        return ModelChoice(TOY_LABEL, "toy")
    if key.lower() in ("vit-b-16", "vit-b/16") or key == VIT_LABEL:
        return ModelChoice(VIT_LABEL, VIT_SPEC)
    if key.endswith(".safetensors"):
        path = Path(key)
        if not path.is_file():
            raise PACLError(f"{key}: no such head file")
        return head_choice(path)
    parse_model_spec(key)  # an unknown architecture is one line now, not a broken page later
    return ModelChoice(f"{key} (custom)", key)


class ModelRegistry:
    """Model choices by label; backbones, heads and segmenters are created on first use and kept."""

    def __init__(self, choices: list[ModelChoice]):
        self._choices = {c.label: c for c in choices}
        self._backbones: dict[str, object] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._segmenters: dict[tuple, object] = {}
        self._guard = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return list(self._choices)

    def add(self, choice: ModelChoice) -> None:
        self._choices.setdefault(choice.label, choice)

    def remove(self, label: str) -> None:
        """Forget a choice (a head trained in the demo whose browser tab closed) and its cached segmenters."""
        with self._guard:
            self._choices.pop(label, None)
            for key in [k for k in self._segmenters if k[0] == label]:
                del self._segmenters[key]

    def choice(self, label: str) -> ModelChoice:
        if label not in self._choices:
            raise PACLError(f"unknown model '{label}'; pick one of: {', '.join(self._choices)}")
        return self._choices[label]

    def lock(self, label: str) -> threading.Lock:
        """The lock to hold while running inference with this model's backbone."""
        spec = self.choice(label).spec
        with self._guard:
            return self._locks.setdefault(spec, threading.Lock())

    def backbone(self, label: str):
        """The choice's backbone, loaded on first use (one load even when requests race)."""
        spec = self.choice(label).spec
        with self.lock(label):
            if spec not in self._backbones:
                log.info("loading model %s", spec)
                self._backbones[spec] = load_backbone(spec)
            return self._backbones[spec]

    def is_loaded(self, label: str) -> bool:
        return self.choice(label).spec in self._backbones

    def has_pacl_head(self, label: str) -> bool:
        """Whether 'pacl' can run: the choice names a head file, or its backbone ships one (the toy model)."""
        return self.choice(label).head is not None or self.backbone(label).default_head is not None

    def segmenter(self, label: str, method: str, image_size: int | None = None, shifts: int = 1,
                  refine: str | None = None):
        """A Segmenter for this model and method (PACLError, e.g. 'pacl' without a head); cached."""
        from pacl_core.segment import Segmenter

        choice = self.choice(label)
        key = (label, method, image_size, shifts, refine)
        if key not in self._segmenters:
            backbone = self.backbone(label)
            seg = Segmenter(backbone, method=method, head=choice.head if method == "pacl" else None,
                            image_size=image_size, shifts=shifts, refine=refine)
            with self._guard:
                if len(self._segmenters) >= SEGMENTER_CACHE_SIZE:
                    self._segmenters.pop(next(iter(self._segmenters)))
                self._segmenters.setdefault(key, seg)
        return self._segmenters[key]


def default_registry(folder: Path = CHECKPOINT_DIR) -> ModelRegistry:
    """Toy, ViT-B/16, then the heads in checkpoints/."""
    return ModelRegistry([ModelChoice(TOY_LABEL, "toy"), ModelChoice(VIT_LABEL, VIT_SPEC), *checkpoint_choices(folder)])


def pick_default(registry: ModelRegistry, requested: str | None = None) -> tuple[str, str]:
    """(label, notice): the requested model, else ViT-B/16 when its weights can be had, else the toy model.

    The notice says, in a sentence for the page, why this model was chosen (empty when nothing needs saying).
    """
    if requested:
        choice = choice_for_request(requested)
        registry.add(choice)
        return choice.label, ""
    ok, why = weights_status(VIT_SPEC)
    if ok:
        return VIT_LABEL, ""
    return TOY_LABEL, (f"Started with the embedded toy model because the ViT-B/16 weights are not available ({why}). "
                       "The toy model is tiny and only knows its own toy world; pick ViT-B/16 once its weights are "
                       "cached to segment real photos.")
