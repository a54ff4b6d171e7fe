"""The embedded toy-world model: a tiny CLIP trained from scratch in the toy world, and its PACL head.

`load_toy_backbone()`, which `load_backbone("toy")` calls (registered on first use by pacl_core.backbone), reads the
shipped toy_clip.safetensors (float16 weights of the open_clip config PACL-Toy, pacl_core/model_configs/PACL-Toy.json)
with no network, and sets `backbone.default_head` to the shipped PACL head toy_pacl_head.safetensors. Retrain both
with `python -m pacl_core toy train`. A tower may carry register tokens (`RegisterVisionTransformer`,
`toy train --registers N`; `ToyBackbone` reads them); the JSON says how many.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from open_clip.transformer import VisionTransformer

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


class RegisterVisionTransformer(VisionTransformer):
    """open_clip's ViT with R learned register tokens after the patch tokens (Darcet et al., "Vision Transformers
    Need Registers", ICLR 2024). They have no position, take part in every block, and are dropped at the end: they
    give the model a place for image-wide information that would otherwise be written into background patches."""

    registers: torch.nn.Parameter  # (R, W)

    def _embeds(self, x: torch.Tensor) -> torch.Tensor:
        """open_clip's _embeds with the registers appended before ln_pre (patch dropout is not supported)."""
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, T, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1 + T, W)
        reg = self.registers.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, R, W)
        return self.ln_pre(torch.cat([x, reg], dim=1))  # (B, 1 + T + R, W); the CLS pooling reads x[:, 0]


def add_registers(model: torch.nn.Module, n: int) -> torch.nn.Module:
    """Give a PACL-Toy model n register tokens (initialised like open_clip's class embedding); n = 0: unchanged."""
    assert n >= 0, f"register count must be >= 0, got {n}"
    if n:
        visual = model.visual
        assert isinstance(visual.patch_dropout, torch.nn.Identity), "registers do not support patch dropout"
        width = visual.class_embedding.shape[0]
        visual.__class__ = RegisterVisionTransformer
        visual.registers = torch.nn.Parameter(width ** -0.5 * torch.randn(n, width))  # (R, W)
    return model


def count_registers(model: torch.nn.Module) -> int:
    registers = getattr(model.visual, "registers", None)
    return 0 if registers is None else int(registers.shape[0])


class ToyBackbone(Backbone):
    """A Backbone whose tower may carry register tokens: they join the tokens after the patches, before ln_pre, as
    RegisterVisionTransformer does, and every method drops them at the end (Backbone.n_registers)."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.n_registers = count_registers(model)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images (B, 3, H, W) -> input tokens (B, 1 + T + R, W), registers last, and the patch grid."""
        if not self.n_registers:
            return super().embed(images)
        visual = self.model.visual
        if images.shape[-2] % self.patch_size or images.shape[-1] % self.patch_size:
            raise PACLError(f"image size {images.shape[-2]}x{images.shape[-1]} must be a multiple of the patch "
                            f"size {self.patch_size}")
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, W, h, w)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, T, W)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding(grid).to(x.dtype)  # (B, 1 + T, W)
        reg = visual.registers.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, R, W)
        return visual.ln_pre(torch.cat([x, reg], dim=1)), grid  # (B, 1 + T + R, W)


def save_clip(root, model: torch.nn.Module, training: dict) -> Path:
    """Save the toy CLIP as float16 safetensors + JSON metadata (config, training settings, measured numbers)."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    register_builtin_models()  # PACL-Toy's open_clip config
    meta = {"format": CLIP_FORMAT, "version": 1, "config": CONFIG_NAME, "dtype": "float16",
            "model_cfg": open_clip.get_model_config(CONFIG_NAME), "registers": count_registers(model),
            "templates": list(TOY_TEMPLATES),
            "training": training}
    return save_tensors(clip_path(root), state, meta)


def create_toy_clip(state: dict | None = None, registers: int = 0) -> torch.nn.Module:
    """A PACL-Toy open_clip model with `registers` register tokens, random or with `state` (any float dtype)
    loaded strictly."""
    register_builtin_models()  # PACL-Toy's open_clip config
    with quiet_hub_logs():  # open_clip warns that no pretrained weights were loaded
        model = open_clip.create_model(CONFIG_NAME, pretrained=None)
    add_registers(model, registers)
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
    return ToyBackbone(model, open_clip.get_tokenizer(CONFIG_NAME), CONFIG_NAME, pretrained, image_size=image_size,
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
    registers = meta.get("registers", 0)  # absent in models saved before registers existed
    if not isinstance(registers, int) or not 0 <= registers <= 64:
        raise PACLError(f"{path}: 'registers' in its JSON must be an integer from 0 to 64, got {registers!r}")
    held = int(state["visual.registers"].shape[0]) if "visual.registers" in state else 0
    if held != registers:
        raise PACLError(f"{path}: its JSON says {registers} register tokens, its weights hold {held}")
    try:
        model = create_toy_clip(state, registers=registers)
    except (PACLError, RuntimeError) as e:  # missing / unexpected keys, or tensors of the wrong shape
        raise PACLError(f"{path}: {str(e).splitlines()[0]}") from None
    templates = templates or tuple(meta.get("templates") or TOY_TEMPLATES)
    backbone = toy_backbone(model, str(path), image_size, device, templates)
    return backbone
