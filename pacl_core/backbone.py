"""The frozen CLIP backbone: any open_clip ViT, its patch tokens at any input size, and cached word embeddings.

`load_backbone("vit-b-16")` gives OpenAI's ViT-B/16 (QuickGELU), `load_backbone("ViT-B-16-quickgelu:none")`
the same architecture with random weights. Other named models plug in through `register_model_loader(name, fn)`:
"toy" (pacl_core.toy.model) is registered that way on first use (`register_builtin_models`): importing pacl_core
registers nothing.
`Backbone.trunk(images, keep)` runs the part every method shares (patch embedding, blocks 1..L-1, and the outputs
of any blocks asked for); `Backbone.finish(trunk, method)` adds one method's last block and ln_post.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import open_clip
import safetensors.torch
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from pacl_core.errors import PACLError
from pacl_core.inputs import check_pixels
from pacl_core.methods import LAST_BLOCK, check_method, layers_needed, run_last_block
from pacl_core.prompts import get_templates

CONFIG_DIR = Path(__file__).parent / "model_configs"  # the project's own small architectures (PACL-Toy)

# Short names a user may type; each maps to (open_clip architecture, pretrained tag).
ALIASES = {
    "vit-b-16": ("ViT-B-16-quickgelu", "openai"),
    "vit-b/16": ("ViT-B-16-quickgelu", "openai"),
    "vit-l-14": ("ViT-L-14-quickgelu", "openai"),
}
DEFAULT_MODEL = "vit-b-16"
TEXT_CACHE_SIZE = 20_000
MODEL_LOADERS: dict[str, Callable[..., Backbone]] = {}  # name -> fn(image_size, device, templates, pretrained)
LOADER_CONFIGS: dict[str, str] = {}  # open_clip config of a registered model -> its name
_CONFIG_DIRS_ADDED: set[Path] = set()


def register_builtin_models() -> None:
    """Make the project's own models known by name: its open_clip configs (CONFIG_DIR) and "toy" for load_backbone.

    Called wherever a model name is resolved, never at import; idempotent. A user's own configs reach open_clip
    through `open_clip.add_model_config(folder)`."""
    if CONFIG_DIR not in _CONFIG_DIRS_ADDED:
        open_clip.add_model_config(CONFIG_DIR)
        _CONFIG_DIRS_ADDED.add(CONFIG_DIR)
    if "toy" not in MODEL_LOADERS:
        from pacl_core.toy.model import CONFIG_NAME, load_toy_backbone  # the toy world builds on this module

        register_model_loader("toy", load_toy_backbone, config=CONFIG_NAME)


def register_model_loader(name: str, loader: Callable[..., Backbone], config: str | None = None) -> None:
    """Make `load_backbone(name)` call loader(image_size=, device=, templates=, pretrained=) instead of open_clip;
    `config` is the open_clip architecture it builds, so a head made for it names `name` (backbone_spec)."""
    MODEL_LOADERS[name] = loader
    if config:
        LOADER_CONFIGS[config] = name


def backbone_spec(meta: dict) -> str:
    """The load_backbone spec ('toy', 'vit-b-16' or NAME:TAG) of the backbone a head's metadata names."""
    name, tag = meta.get("backbone"), meta.get("pretrained")
    if not name:
        raise PACLError("its metadata does not name a backbone")
    register_builtin_models()
    if name in LOADER_CONFIGS:
        return LOADER_CONFIGS[name]
    alias = next((a for a, target in ALIASES.items() if target == (name, tag)), None)
    return alias or f"{name}:{tag or 'none'}"


def check_architecture(name: str) -> None:
    """A one-line PACLError unless open_clip's config `name` is a CLS-token ViT that pacl_core can read."""
    register_builtin_models()
    cfg = open_clip.get_model_config(name) or {}
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    supported = "pacl_core supports open_clip's own CLS-token ViTs such as ViT-B-16-quickgelu or ViT-L-14-quickgelu"
    timm_name = vision.get("timm_model_name")
    if timm_name:
        kind = "a ConvNeXt" if "convnext" in timm_name else f"timm's {timm_name}"
        raise PACLError(f"{name}'s image tower is {kind}; {supported}")
    if isinstance(vision.get("layers"), (list, tuple)):
        raise PACLError(f"{name}'s image tower is a ResNet; {supported}")
    if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok" or vision.get("no_ln_pre"):
        raise PACLError(f"{name}'s image tower does not pool its CLS token as CLIP does; {supported}")
    if text.get("hf_model_name"):
        raise PACLError(f"{name}'s text tower is a Hugging Face transformer; {supported}")


def parse_model_spec(spec: str, pretrained: str | None = None) -> tuple[str, str | None]:
    """'vit-b-16' | 'NAME' | 'NAME:TAG' | 'NAME:none' (+ an explicit pretrained) -> (architecture, tag or None).

    OpenAI weights need QuickGELU: 'ViT-B-16' + 'openai' becomes 'ViT-B-16-quickgelu'.
    """
    register_builtin_models()
    name, tag = spec, None
    if spec.lower() in ALIASES:
        name, tag = ALIASES[spec.lower()]
    elif ":" in spec:
        name, tag = spec.rsplit(":", 1)
    if pretrained is not None:
        tag = pretrained
    if tag is not None and tag.lower() in ("none", "random", ""):
        tag = None
    if name not in open_clip.list_models():
        raise PACLError(f"unknown model '{name}'; use 'toy', 'vit-b-16' or an open_clip name "
                        "such as ViT-B-16-quickgelu")
    if tag == "openai" and not name.endswith("-quickgelu") and f"{name}-quickgelu" in open_clip.list_models():
        name = f"{name}-quickgelu"
    return name, tag


def hub_location(name: str, tag: str) -> tuple[str, list[str]] | None:
    cfg = open_clip.get_pretrained_cfg(name, tag)
    hub = cfg.get("hf_hub", "") if cfg else ""
    if not hub:
        return None
    repo, filename = os.path.split(hub.rstrip("/") + ("/" if hub.endswith("/") else ""))
    files = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return repo, files


def weights_status(spec: str, pretrained: str | None = None, timeout: float = 3.0) -> tuple[bool, str]:
    """Can these weights be had right now? (True, why) if cached locally or the hub answers, else (False, why)."""
    try:
        name, tag = parse_model_spec(spec, pretrained)
    except PACLError as e:
        return False, str(e)
    if tag is None:
        return True, "random weights need no download"
    if Path(tag).is_file():
        return True, f"local file {tag}"
    loc = hub_location(name, tag)
    if loc is None:
        return False, f"no known download for {name} '{tag}'"
    repo, files = loc
    for f in files:
        hit = try_to_load_from_cache(repo, f)
        if isinstance(hit, str):
            return True, f"cached at {hit}"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False, f"{name} '{tag}' weights are not cached and HF_HUB_OFFLINE is set"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False, f"{name} '{tag}' weights are not cached and huggingface.co cannot be reached"
    return True, f"downloadable from huggingface.co/{repo}"


@contextmanager
def quiet_hub_logs():
    """Silence the hub's and open_clip's log lines while a model is created (one sentence reaches the user)."""
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def create_clip(name: str, tag: str | None, device: str = "cpu") -> torch.nn.Module:
    """An open_clip model with `tag` weights: None = random, a hub tag, or a local .safetensors file."""
    if tag is not None and (Path(tag).suffix or os.sep in tag):
        return _create_from_file(name, Path(tag), device)
    if tag is not None and tag not in open_clip.list_pretrained_tags_by_model(name):
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise PACLError(f"open_clip has no '{tag}' weights for {name} (known: {known})")
    if tag is not None:
        ok, why = weights_status(name, tag)
        if not ok:
            raise PACLError(
                f"cannot load {name} '{tag}' weights: {why}; connect to the internet once to cache them, "
                f"pass --pretrained /path/to/open_clip_model.safetensors, or use --model toy"
            )
    try:
        with quiet_hub_logs():
            return open_clip.create_model(name, pretrained=tag, device=device)
    except ModuleNotFoundError as e:
        raise PACLError(f"{name} needs the optional package '{e.name}' (pip install {e.name})") from None
    except Exception as e:  # the hub's many error types, one sentence for the user
        raise PACLError(
            f"cannot load {name} '{tag}' weights ({type(e).__name__}); connect to the internet once to "
            f"cache them or pass --pretrained /path/to/open_clip_model.safetensors"
        ) from None


def _create_from_file(name: str, path: Path, device: str) -> torch.nn.Module:
    if not path.is_file():
        raise PACLError(f"{path}: no such weights file")
    if path.suffix != ".safetensors":
        raise PACLError(f"{path}: only .safetensors weight files are loaded (pickled checkpoints are refused)")
    try:
        state = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:
        raise PACLError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
    model = open_clip.create_model(name, pretrained=None, device="cpu")
    open_clip.model.resize_pos_embed(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("attn_mask")]
    if missing or unexpected:
        raise PACLError(f"{path}: weights do not fit {name} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return model.to(device)


def normalize_uint8(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float, scaled to [0, 1] then normalised per channel."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


@dataclass
class Trunk:
    """Blocks 1..L-1 of one batch: what every method's last block reads."""

    x: torch.Tensor  # (B, 1 + T, W) the output of block L-1, the last block's input
    grid: tuple[int, int]  # (h, w) patches
    feats: dict[int, torch.Tensor] = field(default_factory=dict)  # block i (1-indexed) -> its output (B, 1 + T, W)


class Backbone:
    """A frozen open_clip ViT. `.model` is the open_clip model itself; nothing here modifies it."""

    def __init__(self, model, tokenizer, name: str, pretrained: str | None, image_size: int | None = None,
                 templates="imagenet7", device: str = "cpu"):
        visual = model.visual
        if not (isinstance(visual, open_clip.transformer.VisionTransformer) and visual.attn_pool is None
                and visual.pool_type == "tok" and getattr(visual.transformer, "batch_first", True)):
            raise PACLError(f"{name}'s image tower is a {type(visual).__name__} that does not pool a CLS token as "
                            "CLIP does; pacl_core supports open_clip's own CLS-token ViTs")
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name, self.pretrained, self.device = name, pretrained, torch.device(device)
        self.patch_size = int(open_clip.transformer.to_2tuple(visual.patch_size)[0])
        self.native_grid = tuple(int(g) for g in visual.grid_size)
        self.native_size = self.native_grid[0] * self.patch_size
        self.image_size = int(image_size or self.native_size)
        self.width = int(visual.conv1.out_channels)  # D_v, the width of the patch tokens
        self.embed_dim = int(visual.proj.shape[1])  # D, the joint image-text space
        self.templates = get_templates(templates)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        self.mean = torch.tensor(cfg.get("mean", OPENAI_DATASET_MEAN), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)
        self.default_head: Path | None = None  # a PACL head shipped with this model, if any
        self._pos_cache: dict = {}
        self._text_cache: OrderedDict = OrderedDict()
        self.text_encoder_calls = 0  # how many batches went through the text tower (for the cache bench)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    # ---- images -------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, h, w) normalised float tensor, resized on uint8 with bilinear interpolation
        (cv2 INTER_LINEAR, mmcv's default and so every official segmentor's)."""
        return self.preprocess_batch(image[None], size)

    def preprocess_batch(self, images: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """(B, H, W, 3) uint8 of one size -> (B, 3, h, w) normalised, each resized as `preprocess` does."""
        h, w = size
        if images.shape[1:3] != (h, w):
            images = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR) for im in images])
        return self.normalize(torch.from_numpy(np.ascontiguousarray(images)))  # (B, 3, h, w)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 on any device -> (B, 3, H, W) normalised float on this backbone's device."""
        return normalize_uint8(images.to(self.device, non_blocking=True), self.mean, self.std)

    def positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1 + h*w, W) positional embedding for a patch grid, as the official segmentors interpolate it: the
        native one unchanged for as many patches as the native grid has (any shape, as they check), else bicubic
        with scale factors ((h + 0.1) / h0, (w + 0.1) / w0) (the factor, not the size, sets where each output
        samples), no antialiasing."""
        pe = self.model.visual.positional_embedding  # (1 + H0*W0, W)
        if grid[0] * grid[1] == self.native_grid[0] * self.native_grid[1]:  # as they test it: the token count
            return pe
        key = (tuple(grid), pe.data_ptr(), pe._version)
        if key not in self._pos_cache:
            h0, w0 = self.native_grid
            cls, pos = pe[:1], pe[1:].reshape(1, h0, w0, -1).permute(0, 3, 1, 2)  # (1, W, H0, W0)
            factors = ((grid[0] + 0.1) / h0, (grid[1] + 0.1) / w0)
            pos = F.interpolate(pos.float(), scale_factor=factors, mode="bicubic", align_corners=False,
                                recompute_scale_factor=False)  # (1, W, h, w)
            pos = pos.to(pe.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)  # (h*w, W)
            self._pos_cache.clear()
            self._pos_cache[key] = torch.cat([cls, pos], dim=0).detach()
        return self._pos_cache[key]

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images (B, 3, H, W) -> input tokens of the transformer (B, 1 + T, W) and the patch grid
        (H // p, W // p): the patch convolution drops any remainder, as in the official forward."""
        visual = self.model.visual
        H, W = images.shape[-2:]
        if min(H, W) < self.patch_size:
            raise PACLError(f"image size {H}x{W} is smaller than one {self.patch_size} px patch")
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, W, h, w)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, T, W)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
        return visual.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding(grid).to(x.dtype)), grid

    @property
    def depth(self) -> int:
        """L, the number of transformer blocks."""
        return len(self.model.visual.transformer.resblocks)

    def trunk(self, images: torch.Tensor, keep=()) -> Trunk:
        """Normalised images (B, 3, H, W) -> the shared part of every method's forward: blocks 1..L-1.

        Returns x, the output of block L-1 (B, 1 + T, W), the grid, and the outputs of the blocks in `keep`
        (1-indexed, each below L): exactly those, so a method's declared layers cost memory only when asked for.
        """
        keep = set(keep)
        if any(not 1 <= i < self.depth for i in keep):
            raise PACLError(f"can keep the outputs of blocks 1..{self.depth - 1} only, not {sorted(keep)}")
        x, grid = self.embed(images)  # (B, 1 + T, W)
        feats = {}
        for i, block in enumerate(self.model.visual.transformer.resblocks[:-1], start=1):
            x = block(x)  # (B, 1 + T, W)
            if i in keep:
                feats[i] = x
        return Trunk(x, grid, feats)

    def finish(self, trunk: Trunk, method: str = "vanilla") -> torch.Tensor:
        """A trunk through `method`'s last block (pacl_core.methods) and ln_post -> (B, 1 + T, D_v), CLS first."""
        need = layers_needed(method, self.depth)
        missing = [i for i in need if i not in trunk.feats]
        if missing:
            raise PACLError(f"method '{method}' reads blocks {missing}, which this trunk did not keep")
        feats = {i: trunk.feats[i] for i in need}  # exactly the blocks the method declares
        x = run_last_block(self.model.visual.transformer.resblocks[-1], trunk.x, trunk.grid, method,
                           feats)  # (B, 1 + T, W)
        return self.model.visual.ln_post(x)  # (B, 1 + T, D_v)

    def finish_many(self, trunk: Trunk, methods) -> dict[str, torch.Tensor]:
        """{method: finish(trunk, method)}; methods that share a last block (vanilla, pacl) share its output."""
        by_block: dict = {}
        for m in methods:
            fn = LAST_BLOCK[check_method(m)]
            if fn not in by_block:
                by_block[fn] = self.finish(trunk, m)  # (B, 1 + T, D_v)
        return {m: by_block[LAST_BLOCK[m]] for m in methods}

    def tokens(self, images: torch.Tensor, method: str = "vanilla") -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images (B, 3, H, W) -> all output tokens after ln_post, CLS first: (B, 1 + T, D_v).

        `method` picks how the last transformer block runs (see pacl_core.methods); the model is never modified.
        """
        trunk = self.trunk(images, keep=layers_needed(method, self.depth))
        return self.finish(trunk, method), trunk.grid  # (B, 1 + T, D_v)

    def patch_tokens(self, images: torch.Tensor, method: str = "vanilla") -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images (B, 3, H, W) -> patch tokens after ln_post, before the projection (B, T, D_v)."""
        x, grid = self.tokens(images, method)
        return x[:, 1:], grid  # (B, T, D_v)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's own image embedding (the CLS token through the projection), L2-normalised: (B, D).

        At the native size this equals model.encode_image; other sizes use interpolated positions.
        """
        x, _ = self.tokens(images, "vanilla")  # (B, 1 + T, D_v)
        return F.normalize(x[:, 0] @ self.model.visual.proj, dim=-1)  # (B, D)

    def vanilla_patch_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, T, D_v) through CLIP's own projection -> (B, T, D)."""
        return tokens @ self.model.visual.proj

    # ---- text ---------------------------------------------------------------------------------
    def text_embeddings(self, words, templates=None) -> torch.Tensor:
        """Words -> (N, D) L2-normalised embeddings, each the mean over the prompt templates; cached."""
        templates = self.templates if templates is None else get_templates(templates)
        keys = [(w, templates) for w in words]
        missing = list(OrderedDict.fromkeys(k for k in keys if k not in self._text_cache))
        if missing:
            self._encode_words([w for w, _ in missing], templates)
        for k in keys:
            self._text_cache.move_to_end(k)
        out = torch.stack([self._text_cache[k] for k in keys]) if keys else torch.empty(0, self.embed_dim)
        return out.to(self.device)

    @torch.no_grad()
    def _encode_words(self, words: list[str], templates: tuple) -> None:
        prompts = [t.format(w) for w in words for t in templates]
        tokens = self.tokenizer(prompts).to(self.device)  # (N * P, L); long words are truncated
        self.text_encoder_calls += 1
        emb = self.model.encode_text(tokens, normalize=True).float()  # (N * P, D)
        emb = emb.view(len(words), len(templates), -1).mean(dim=1)  # (N, D)
        emb = F.normalize(emb, dim=-1).cpu()
        for w, e in zip(words, emb):
            self._text_cache[(w, templates)] = e
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)


def check_device(device) -> torch.device:
    """A device name a user gave -> torch.device, or a one-line PACLError if it does not exist here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PACLError(f"unknown device '{device}'; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PACLError(f"device '{device}': no CUDA GPU is available here; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise PACLError(f"device '{device}': this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PACLError(f"device '{device}': Apple's MPS is not available here; use cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise PACLError(f"device '{device}' is not supported; use cpu, cuda or cuda:N")
    return dev


def load_backbone(spec: str = DEFAULT_MODEL, pretrained: str | None = None, image_size: int | None = None,
                  device: str = "cpu", templates=None) -> Backbone:
    """'toy' | 'vit-b-16' | 'NAME[:TAG]' -> a ready Backbone. Errors are one-line PACLErrors, raised before any
    weights load when a setting is wrong."""
    check_pixels("image_size", image_size)
    check_device(device)
    if templates is not None:
        get_templates(templates)  # an unknown set fails here, not after the download
    register_builtin_models()
    if spec in MODEL_LOADERS:
        return MODEL_LOADERS[spec](image_size=image_size, device=device, templates=templates, pretrained=pretrained)
    name, tag = parse_model_spec(spec, pretrained)
    check_architecture(name)
    model = create_clip(name, tag, device=device)
    tokenizer = open_clip.get_tokenizer(name)
    default_size = 448 if image_size is None and model.visual.grid_size[0] * model.visual.patch_size[0] == 224 else None
    return Backbone(model, tokenizer, name, tag, image_size=image_size or default_size,
                    templates=templates or "imagenet7", device=device)
