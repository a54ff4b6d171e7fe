"""The embedded toy-world model: a tiny CLIP trained from scratch in the toy world, and its PACL head.

`load_toy_backbone()`, which `load_backbone("toy")` calls (registered on first use by pacl_core.backbone), reads the
shipped toy_clip.safetensors (float16 weights of the open_clip config PACL-Toy, pacl_core/model_configs/PACL-Toy.json)
with no network, and sets `backbone.default_head` to the shipped PACL head toy_pacl_head.safetensors. Retrain both
with `python -m pacl_core toy train`.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from pacl_core.backbone import Backbone, quiet_hub_logs, register_builtin_models
from pacl_core.checkpoint import load_tensors, save_tensors
from pacl_core.errors import PACLError

CONFIG_NAME = "PACL-Toy"
ASSET_DIR = Path(__file__).resolve().parent / "weights"  # package data: in the wheel too
CLIP_FILE = "toy_clip.safetensors"
HEAD_FILE = "toy_pacl_head.safetensors"
CLIP_FORMAT = "pacl-toy-clip"
# Words are embedded the way toy captions name objects ("a star"); the README (toy world) measures other template sets.
TOY_TEMPLATES = ("a {}",)


def clip_path(root=None) -> Path:
    return Path(root or ASSET_DIR) / CLIP_FILE


def head_path(root=None) -> Path:
    return Path(root or ASSET_DIR) / HEAD_FILE


def save_clip(root, model: torch.nn.Module, training: dict) -> Path:
    """Save the toy CLIP as float16 safetensors + JSON metadata (config, training settings, measured numbers)."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    register_builtin_models()  # PACL-Toy's open_clip config
    meta = {"format": CLIP_FORMAT, "version": 1, "config": CONFIG_NAME, "dtype": "float16",
            "model_cfg": open_clip.get_model_config(CONFIG_NAME), "templates": list(TOY_TEMPLATES),
            "training": training}
    return save_tensors(clip_path(root), state, meta)


def create_toy_clip(state: dict | None = None) -> torch.nn.Module:
    """A PACL-Toy open_clip model, random or with `state` (any float dtype) loaded strictly."""
    register_builtin_models()  # PACL-Toy's open_clip config
    with quiet_hub_logs():  # open_clip warns that no pretrained weights were loaded
        model = open_clip.create_model(CONFIG_NAME, pretrained=None)
    if state is not None:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("attn_mask")]
        if missing or unexpected:
            raise PACLError(f"toy weights do not fit {CONFIG_NAME} ({len(missing)} missing, "
                            f"{len(unexpected)} unexpected tensors)")
    return model


def toy_backbone(model: torch.nn.Module, pretrained: str | None = None, image_size: int | None = None,
                 device: str = "cpu", templates=TOY_TEMPLATES):
    """Wrap a PACL-Toy open_clip model (trained or not) as a frozen Backbone with the toy prompt templates."""
    register_builtin_models()
    return Backbone(model, open_clip.get_tokenizer(CONFIG_NAME), CONFIG_NAME, pretrained, image_size=image_size,
                    templates=templates, device=device)


def load_toy_backbone(image_size: int | None = None, device: str = "cpu", root=None, with_head: bool = True,
                      templates=None, pretrained=None):
    """The toy CLIP as a Backbone (native 96 px input unless image_size), with its PACL head as default_head.
    templates: a prompt template set to use instead of the ones it was trained with (`toy_clip.json`).
    pretrained: another toy tower file (`--model toy --pretrained my_toy/toy_clip.safetensors`, as `toy train`
    writes it) instead of the shipped one; the head beside it, if any, becomes its default head."""
    path = Path(pretrained) if pretrained else clip_path(root)
    if not path.is_file():
        raise PACLError(f"toy model weights are missing ({path}); reinstall pacl-explorer, or train them with "
                        "`python -m pacl_core toy train --out DIR`")
    backbone = load_toy_tower(path, image_size, device, templates)
    if with_head and (path.parent / HEAD_FILE).is_file():
        backbone.default_head = path.parent / HEAD_FILE
    return backbone


def load_toy_tower(path, image_size: int | None = None, device: str = "cpu", templates=None):
    """A toy CLIP file (toy_clip.safetensors + its JSON, any name) as a Backbone without a head; every problem
    with the file, e.g. one that is not a toy tower, is a one-line PACLError."""
    path = Path(path)
    state, meta = load_tensors(path, CLIP_FORMAT)
    if meta.get("config") != CONFIG_NAME:
        raise PACLError(f"{path}: made for config '{meta.get('config')}', expected '{CONFIG_NAME}'")
    try:
        model = create_toy_clip(state)
    except (PACLError, RuntimeError) as e:  # missing / unexpected keys, or tensors of the wrong shape
        raise PACLError(f"{path}: {str(e).splitlines()[0]}") from None
    templates = templates or tuple(meta.get("templates") or TOY_TEMPLATES)
    backbone = toy_backbone(model, str(path), image_size, device, templates)
    return backbone
