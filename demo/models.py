"""The demo's model registry: which models a user can pick, each loaded once, lazily, and cached.

Choices are the embedded toy model, OpenAI's ViT-B/16, every PACL head found in checkpoints/ (a
`NAME.safetensors` with its `NAME.json` beside it) and every head on the Hugging Face Hub named in the environment
variable PACL_HEADS (`org/repo,org/other[@REVISION][:FILE]`, downloaded once into the Hugging Face cache; a Space
preloads them at build time with `preload_from_hub`). Backbones are shared between choices that use the same one;
inference on one backbone is serialised by its lock, since its caches are not thread-safe.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from pacl_core.backbone import backbone_spec, load_backbone, parse_model_spec, weights_status
from pacl_core.errors import PACLError
from pacl_core.hub import HUB_PREFIX, fetch_head, is_hub_spec, parse_hub_spec
from pacl_core.segment import Segmenter
from pacl_core.toy.model import head_path as toy_head_path

log = logging.getLogger(__name__)

TOY_LABEL = "Toy world (embedded, offline)"
VIT_LABEL = "ViT-B/16 (OpenAI CLIP)"
VIT_SPEC = "vit-b-16"
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
SEGMENTER_CACHE_SIZE = 64
HEADS_ENV = "PACL_HEADS"


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model dropdown: a backbone spec for load_backbone and, optionally, a PACL head file."""

    label: str
    spec: str
    head: str | None = None  # None: the backbone's own head (the toy model ships one), if any


def head_choice(path: Path, name: str | None = None) -> ModelChoice:
    """A head file -> a dropdown entry (labelled `name`, default the file's stem); PACLError if it has no readable
    PACL-head metadata beside it."""
    meta_file = path.with_suffix(".json")
    if not meta_file.is_file():
        raise PACLError(f"{path.name}: its metadata file {meta_file.name} is missing")
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError):
        raise PACLError(f"{meta_file.name}: not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != "pacl-head":
        raise PACLError(f"{path.name}: not a PACL head checkpoint")
    spec = backbone_spec(meta)
    shown = {"toy": "toy world", VIT_SPEC: "ViT-B/16"}.get(spec, spec)
    return ModelChoice(label=f"PACL head: {name or path.stem} ({shown})", spec=spec, head=str(path))


def hub_choice(spec: str) -> ModelChoice:
    """'hf-hub:ORG/REPO[@REV][:FILE]' (or just ORG/REPO...) -> a dropdown entry; the head is fetched (cached) now,
    since its JSON names the backbone to load."""
    spec = spec if is_hub_spec(spec) else HUB_PREFIX + spec
    where = str(parse_hub_spec(spec))[len(HUB_PREFIX):]
    return head_choice(fetch_head(spec), name=where)


def hub_choices(value: str | None = None) -> list[ModelChoice]:
    """The heads named in PACL_HEADS (comma-separated); one that cannot be had is skipped with a log line."""
    value = os.environ.get(HEADS_ENV, "") if value is None else value
    choices = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        try:
            choices.append(hub_choice(item))
        except PACLError as e:
            log.warning("%s: skipping %s", HEADS_ENV, e)
    return choices


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
    """What `--model` asked for: 'toy', 'vit-b-16', a head .safetensors file, an hf-hub: head, or any backbone spec."""
    key = requested.strip()
    if key.lower() == "toy" or key == TOY_LABEL:
        return ModelChoice(TOY_LABEL, "toy")
    if key.lower() in ("vit-b-16", "vit-b/16") or key == VIT_LABEL:
        return ModelChoice(VIT_LABEL, VIT_SPEC)
    if is_hub_spec(key):
        return hub_choice(key)
    if key.endswith(".safetensors"):
        path = Path(key)
        if not path.is_file():
            raise PACLError(f"{key}: no such head file")
        return head_choice(path)
    parse_model_spec(key)  # an unknown architecture is one line now, not a broken page later
    return ModelChoice(f"{key} (custom)", key)


ANY_SESSION = object()  # `choice(label)` from inside the demo, after the visitor's own request was checked


def _one_line(value, n: int = 60) -> str:
    text = " ".join(str(value).split())
    return text[:n] + "…" if len(text) > n else text


class ModelRegistry:
    """Model choices by label; backbones, heads and segmenters are created on first use and kept.

    A choice added with an owner (a head a browser session trained) is visible only to that session: other
    sessions can neither pick it nor see its label in a message. `heavy_lane()` is a second registry over the same
    choices with its own copies of the backbones, so a heavy request never holds the lock light requests wait on.
    """

    def __init__(self, choices: list[ModelChoice]):
        self._choices = {c.label: c for c in choices}
        self._owners: dict[str, str] = {}  # label -> the session that owns it (trained heads)
        self._backbones: dict[str, object] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._segmenters: dict[tuple, object] = {}
        self._guard = threading.Lock()
        self._lane: ModelRegistry | None = None

    @property
    def labels(self) -> list[str]:
        return list(self._choices)

    def labels_for(self, session=None) -> list[str]:
        """The labels one session may pick: every shared choice and its own heads (None: shared ones only)."""
        return [label for label in list(self._choices) if self._owners.get(label, session) == session]

    def add(self, choice: ModelChoice, owner: str | None = None) -> None:
        """Add a choice; with an owner (a session), only that session may pick it or see its label."""
        with self._guard:
            self._choices.setdefault(choice.label, choice)
            if owner is not None:
                self._owners[choice.label] = owner

    def remove(self, label: str) -> None:
        """Forget a choice (a head trained in the demo whose browser tab closed) and its cached segmenters."""
        with self._guard:
            self._choices.pop(label, None)
            self._owners.pop(label, None)
            for key in [k for k in self._segmenters if k[0] == label]:
                del self._segmenters[key]
            lane = self._lane
        if lane is not None:
            lane.remove(label)

    def heavy_lane(self) -> ModelRegistry:
        """The registry heavy requests run on: the same choices and owners, its own backbones, locks and
        segmenters (each model loaded a second time, on the first heavy request that uses it)."""
        with self._guard:
            if self._lane is None:
                lane = ModelRegistry([])
                lane._choices, lane._owners = self._choices, self._owners
                self._lane = lane
            return self._lane

    def choice(self, label, session=ANY_SESSION) -> ModelChoice:
        """The choice named `label`; with a session, one only that session may use (its own heads, the shared
        models). The message lists only what that session may pick."""
        visible = isinstance(label, str) and label in self._choices and (
            session is ANY_SESSION or self._owners.get(label, session) == session)
        if not visible:
            shown = self.labels_for(None if session is ANY_SESSION else session)
            raise PACLError(f"unknown model '{_one_line(label)}'; pick one of: {', '.join(shown)}")
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

    def head_known(self, label: str) -> bool:
        """has_pacl_head without loading a model: a head file is named, the loaded backbone ships one, or the
        choice is the toy model and its head file is there."""
        choice = self.choice(label)
        if choice.head is not None:
            return True
        if choice.spec in self._backbones:
            return self._backbones[choice.spec].default_head is not None
        return choice.spec == "toy" and toy_head_path().is_file()

    def segmenter(self, label: str, method: str, image_size: int | None = None, shifts: int = 1,
                  refine: str | None = None):
        """A Segmenter for this model and method (PACLError, e.g. 'pacl' without a head); cached.

        image_size None keeps the method's official protocol (e.g. SCLIP's sliding windows); a size runs every
        method on the whole image at that size, so all of them share one backbone trunk."""
        choice = self.choice(label)
        key = (label, method, image_size, shifts, refine)
        if key not in self._segmenters:
            backbone = self.backbone(label)
            seg = Segmenter(backbone, method=method, head=choice.head if method == "pacl" else None,
                            image_size=image_size, mode=None if image_size is None else "whole", shifts=shifts,
                            refine=refine)
            with self._guard:
                if len(self._segmenters) >= SEGMENTER_CACHE_SIZE:
                    self._segmenters.pop(next(iter(self._segmenters)))
                self._segmenters.setdefault(key, seg)
        return self._segmenters[key]


def default_registry(folder: Path = CHECKPOINT_DIR, hub_heads: str | None = None) -> ModelRegistry:
    """Toy, ViT-B/16, the heads in checkpoints/, then the Hub heads of PACL_HEADS (or `hub_heads`)."""
    return ModelRegistry([ModelChoice(TOY_LABEL, "toy"), ModelChoice(VIT_LABEL, VIT_SPEC), *checkpoint_choices(folder),
                          *hub_choices(hub_heads)])


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
