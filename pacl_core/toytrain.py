"""Training in the toy world: a tiny CLIP from scratch, then PACL's vision embedder on the frozen CLIP.

Stage 1 (`train_clip`) trains the PACL-Toy open_clip model with open_clip's own contrastive loss on
scene-caption pairs: only the CLS image embedding is aligned with the caption, as in real CLIP.
Stage 2 (`train_pacl`) freezes that CLIP and trains e_v (VisionEmbedder) with PACLLoss on image-caption
pairs too: by default each scene paired with a *mention*, a short caption naming one thing in it (one object, or
the background), as most web captions name one thing; `pacl_captions="scene"` uses the full scene captions
instead (then PACL finds nothing local: see the README). Neither stage ever sees a segmentation mask.
`train_toy` runs both, saves the model + head as safetensors + JSON, and measures the result on a held-out
test split.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from tqdm import tqdm

from . import toymodel, toyworld
from .checkpoint import save_head
from .loss import PACLLoss
from .pacl import VisionEmbedder

PACL_CAPTIONS = ("mentions", "scene")  # stage 2's captions: one thing per scene, or the whole scene


@dataclass
class ToyTrainConfig:
    """Every knob of the two stages; saved with the weights so a run can be reproduced."""

    seed: int = 0
    # stage 1 runs in phases (image size, steps, scenes in the pool): small images first, then the native
    # size, as in CLIPA's low-resolution pre-training; the fixed sin-cos positions fit every grid exactly
    clip_phases: tuple = ((48, 1400, 24000), (96, 250, 6000))
    variants: int = 4  # each scene comes in this many shape variants, kept together in a batch
    clip_batch: int = 128
    clip_lr: float = 2e-3
    clip_warmup: int = 40
    weight_decay: float = 0.05
    pacl_steps: int = 1000
    pacl_batch: int = 128
    pacl_lr: float = 2e-3
    pacl_tau: float = 0.1
    pacl_captions: str = "mentions"  # one of PACL_CAPTIONS
    mention_draws: int = 4  # mentions per scene; each epoch of stage 2 uses the next, like COCO's 5 captions
    pacl_init_from_projection: bool = False  # True: e_v starts as CLIP's own patch projection (= vanilla)
    threads: int = 2

    def __post_init__(self):
        assert self.pacl_captions in PACL_CAPTIONS, f"pacl_captions must be one of {PACL_CAPTIONS}"
        assert self.mention_draws >= 1, "mention_draws must be at least 1"

    @property
    def image_size(self) -> int:
        return int(self.clip_phases[-1][0])


def images_to_tensor(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) normalised float tensor."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def _pool_groups(seed: int, lo: int, hi: int, size: int, variants: int, mention_draws: int):
    """Scene groups lo..hi-1 of a pool: (images (n, H, W, 3) uint8, captions, mention draws). A pure function."""
    images = np.empty(((hi - lo) * variants, size, size, 3), np.uint8)
    captions, mentions = [], [[] for _ in range(mention_draws)]
    for g in range(lo, hi):
        scenes = [toyworld.make_scene(seed, g, "train", size, variant=v) for v in range(variants)]
        for scene in scenes:
            images[len(captions)] = scene.image
            captions.append(scene.caption)
        for d, draw in enumerate(mentions):
            k = int(np.random.default_rng([seed, g, d]).integers(len(scenes[0].objects)))  # same count in variants
            draw += [toyworld.mention(sc.objects, sc.background, k, np.random.default_rng([seed, g, v, d]))
                     for v, sc in enumerate(scenes)]
    return images, captions, mentions


PARALLEL_MIN_GROUPS = 500  # smaller pools are generated in this process: starting workers would cost more


def make_pool(seed: int, n: int, size: int, variants: int, progress: bool = True,
              mention_draws: int = 1, workers: int = 1) -> tuple[np.ndarray, list, list]:
    """n training scenes of `size` px, the variants of a scene adjacent.

    Returns (N, H, W, 3) uint8 images, N captions, and `mention_draws` lists of N mentions. A mention names one
    thing (toyworld.mention); within one draw the variants of a scene mention the same object, so they stay each
    other's hard negatives, and whether it is the background is drawn for each image. Draws are independent.
    Every scene is a pure function of (seed, group, variant), so `workers` > 1 processes (forked, where the
    platform can fork) give exactly the same pool, faster.
    """
    groups = max(1, n // variants)
    chunks = 4 * workers if workers > 1 and groups >= PARALLEL_MIN_GROUPS else 1
    bounds = [(groups * i // chunks, groups * (i + 1) // chunks) for i in range(chunks)]
    bar = tqdm(total=groups * variants, desc=f"generating {size} px scenes", unit="scene", disable=not progress,
               leave=False)
    parts = []
    context = _fork_context() if chunks > 1 else None
    if context is None:
        for lo, hi in bounds:
            parts.append(_pool_groups(seed, lo, hi, size, variants, mention_draws))
            bar.update((hi - lo) * variants)
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for (lo, hi), part in zip(bounds, pool.map(_pool_groups, *zip(*[
                    (seed, lo, hi, size, variants, mention_draws) for lo, hi in bounds]))):
                parts.append(part)
                bar.update((hi - lo) * variants)
    bar.close()
    images = np.concatenate([p[0] for p in parts])  # (N, H, W, 3)
    captions = [c for p in parts for c in p[1]]
    mentions = [[m for p in parts for m in p[2][d]] for d in range(mention_draws)]
    return images, captions, mentions


def _fork_context():
    """multiprocessing's fork context where the platform has one (Linux, macOS), else None (generate serially)."""
    import multiprocessing

    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; never on norms, biases, embeddings, or the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding")
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _grouping(n: int, batch: int, variants: int) -> tuple[int, int]:
    """(scene groups in n images, whole groups per batch)."""
    return n // variants, max(1, batch // variants)


def steps_per_epoch(n: int, batch: int, variants: int = 1) -> int:
    """How many batches `_batches` draws from one permutation before it draws the next (one epoch)."""
    groups, per = _grouping(n, batch, variants)
    return max(1, groups // per)


def _batches(n: int, batch: int, steps: int, seed: int, variants: int = 1):
    """`steps` index batches from epochs of seeded permutations of the n // variants scene groups.

    A batch holds batch // variants whole groups, so variants of one scene are each other's negatives.
    """
    g = np.random.default_rng(seed)
    groups, per = _grouping(n, batch, variants)
    order, pos = g.permutation(groups), 0
    for _ in range(steps):
        if pos + per > groups:
            order, pos = g.permutation(groups), 0
        chosen = order[pos:pos + per]  # (per,)
        yield (chosen[:, None] * variants + np.arange(variants)[None, :]).ravel()  # (per * variants,)
        pos += per


@contextmanager
def sincos_grid(visual, grid: int):
    """Temporarily give a sin-cos ViT the exact positional embedding of a grid x grid input."""
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    pe = visual.positional_embedding
    assert not pe.requires_grad, "phases at other sizes need the fixed sin-cos positional embedding"
    native = pe.data
    pe.data = torch.from_numpy(get_2d_sincos_pos_embed(pe.shape[1], grid, cls_token=True)).to(native)
    try:
        yield
    finally:
        pe.data = native


def train_clip(model, tokenizer, images: np.ndarray, captions: list[str], cfg: ToyTrainConfig, steps: int,
               progress: bool = True, desc: str = "stage 1: CLIP") -> list[float]:
    """Stage 1 (one phase): open_clip's contrastive loss on (scene, caption) pairs. Returns the loss per step."""
    model.train().requires_grad_(True)
    model.visual.positional_embedding.requires_grad_(False)  # fixed sin-cos positions
    mean, std = (torch.tensor(v) for v in (model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]))
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.clip_lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.loss.ClipLoss()
    losses = []
    tokens = tokenizer(captions)  # (N, L): tokenized once, not at every step
    batches = _batches(len(images), cfg.clip_batch, steps, cfg.seed + len(images), cfg.variants)
    bar = tqdm(enumerate(batches), total=steps, desc=desc, unit="step", disable=not progress)
    with sincos_grid(model.visual, images.shape[1] // model.visual.patch_size[0]):
        for step, idx in bar:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, steps, cfg.clip_warmup, cfg.clip_lr)
            x = images_to_tensor(images[idx], mean, std)  # (B, 3, H, W)
            text = tokens[torch.from_numpy(idx)]  # (B, L)
            img_f, txt_f, scale = model(x, text)  # (B, D), (B, D), ()
            loss = loss_fn(img_f, txt_f, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def _patch_tokens(backbone, images: np.ndarray, batch: int = 256, progress: bool = True) -> torch.Tensor:
    """Frozen patch tokens of every image: (N, T, D_v), stored as float16 to halve the memory."""
    out = []
    for start in tqdm(range(0, len(images), batch), desc="stage 2: patch tokens", unit="batch",
                      disable=not progress, leave=False):
        x = images_to_tensor(images[start:start + batch], backbone.mean.flatten().cpu(), backbone.std.flatten().cpu())
        tokens, _ = backbone.patch_tokens(x.to(backbone.device))  # (b, T, D_v)
        out.append(tokens.half().cpu())
    return torch.cat(out)  # (N, T, D_v)


@torch.no_grad()
def _caption_embeddings(backbone, captions: list[str], batch: int = 512) -> torch.Tensor:
    """Frozen text embeddings of the captions, L2-normalised: (N, D)."""
    out = []
    for start in range(0, len(captions), batch):
        tokens = backbone.tokenizer(captions[start:start + batch]).to(backbone.device)  # (b, L)
        out.append(backbone.model.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(out)  # (N, D)


def train_pacl(backbone, images: np.ndarray, captions: list, cfg: ToyTrainConfig,
               progress: bool = True) -> tuple[VisionEmbedder, list[float]]:
    """Stage 2: e_v on the frozen backbone's patch tokens with PACLLoss on captions. Returns (head, losses).

    captions: one per image, or several lists of one per image (draws), each epoch using the next draw in turn.
    """
    torch.manual_seed(cfg.seed + 1)
    head = VisionEmbedder(backbone.width, backbone.embed_dim)
    if cfg.pacl_init_from_projection:
        head.init_from_projection(backbone.model.visual.proj.detach().float().cpu())
    tokens = _patch_tokens(backbone, images, progress=progress)  # (N, T, D_v)
    draws = [captions] if isinstance(captions[0], str) else list(captions)
    assert all(len(d) == len(images) for d in draws), "one caption per image in every draw"
    text = torch.stack([_caption_embeddings(backbone, d) for d in draws])  # (draws, N, D)
    per_epoch = steps_per_epoch(len(images), cfg.pacl_batch, cfg.variants)
    loss_fn = PACLLoss(tau=cfg.pacl_tau)
    scale = backbone.logit_scale
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.pacl_lr, weight_decay=cfg.weight_decay)
    losses = []
    bar = tqdm(enumerate(_batches(len(images), cfg.pacl_batch, cfg.pacl_steps, cfg.seed + 1, cfg.variants)),
               total=cfg.pacl_steps, desc="stage 2: PACL", unit="step", disable=not progress)
    head.train()
    for step, idx in bar:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.pacl_steps, cfg.clip_warmup, cfg.pacl_lr)
        idx_t = torch.from_numpy(idx)
        emb = head(tokens[idx_t].float())  # (B, T, D)
        loss = loss_fn(emb, text[(step // per_epoch) % len(draws)][idx_t], scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return head.eval().requires_grad_(False), losses


def train_toy(out, cfg: ToyTrainConfig | None = None, progress: bool = True, evaluate_n: int = 200) -> dict:
    """Both stages, then save to `out` (toy_clip.*, toy_pacl_head.*) and measure on held-out scenes."""
    cfg = cfg or ToyTrainConfig()
    out = Path(out)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    model = toymodel.create_toy_clip()
    assert cfg.image_size == model.visual.image_size[0], "the last phase must run at the model's native size"
    tokenizer = open_clip.get_tokenizer(toymodel.CONFIG_NAME)
    clip_losses, seconds = [], {}
    for k, (size, steps, pool) in enumerate(cfg.clip_phases):
        t = time.time()
        last = k == len(cfg.clip_phases) - 1  # stage 2 trains on the last phase's scenes
        draws = cfg.mention_draws if last and cfg.pacl_captions == "mentions" else 0  # only what stage 2 reads
        images, captions, mentions = make_pool(cfg.seed + k, pool, size, cfg.variants, progress, draws,
                                               workers=cfg.threads)
        seconds[f"data_{size}px"] = round(time.time() - t, 1)
        t = time.time()
        clip_losses += train_clip(model, tokenizer, images, captions, cfg, steps, progress,
                                  desc=f"stage 1: CLIP at {size} px")
        seconds[f"clip_{size}px"] = round(time.time() - t, 1)
    info = {"config": toymodel.CONFIG_NAME, "train": asdict(cfg),
            "clip_loss": {"first": float(np.mean(clip_losses[:10])), "last": float(np.mean(clip_losses[-10:]))}}
    toymodel.save_clip(out, model, info)
    backbone = toymodel.load_toy_backbone(root=out, with_head=False)  # exactly the saved float16 weights
    t = time.time()
    head, pacl_losses = train_pacl(backbone, images, mentions if cfg.pacl_captions == "mentions" else captions, cfg,
                                   progress)
    seconds["pacl"] = round(time.time() - t, 1)
    seconds["total"] = round(time.time() - t0, 1)
    info.update(pacl_loss={"first": float(np.mean(pacl_losses[:10])), "last": float(np.mean(pacl_losses[-10:]))},
                seconds=seconds, threads=cfg.threads, torch=torch.__version__, open_clip=open_clip.__version__)
    save_head(out / toymodel.HEAD_FILE, head, backbone, tau=cfg.pacl_tau, logit_scale=backbone.logit_scale,
              training=info)
    toymodel.save_clip(out, model, info)
    if evaluate_n:
        info["eval"] = evaluate_fresh(out, evaluate_n, EVAL_SEED, progress)
        toymodel.save_clip(out, model, info)
    return info


EVAL_SEED = 1000  # the held-out scenes measured after training: `toy generate --split test --seed 1000`


def evaluate_fresh(root, n: int, seed: int, progress: bool = True) -> dict:
    """Generate a held-out test split and evaluate the model saved in `root` on it."""
    import tempfile

    from .toyeval import evaluate_toy

    backbone = toymodel.load_toy_backbone(root=root)
    with tempfile.TemporaryDirectory() as tmp:
        toyworld.write_split(tmp, "test", seed=seed, n=n, size=backbone.native_size)
        result = evaluate_toy(tmp, backbone, progress=progress)
    result["test_split"] = {"seed": seed, "n": n}
    return result
