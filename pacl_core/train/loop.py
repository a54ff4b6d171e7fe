"""Training the PACL vision embedder e_v on image-caption pairs, on top of a frozen CLIP.

Only e_v learns (PACLLoss, AdamW, cosine schedule with linear warm-up, weight decay, gradient clipping, mixed
precision on GPUs). Under torchrun every process takes a slice of the global batch and the loss is computed
over the whole global batch (pacl_core.train.distributed). Every `save_every` steps a checkpoint (safetensors +
JSON: head, optimizer, step, loss scaler, every rank's data position) is written atomically; `resume`
continues from the newest complete one with the same schedule and the same next sample, so a killed run
loses at most one interval. Progress goes to a tqdm bar, OUT/log.csv and optionally TensorBoard.
With `cache_tokens` the frozen backbone's patch tokens and text embeddings are stored on disk as they are first
computed (pacl_core.train.cache); every later use of a sample reads them instead of running the ViT and the text
tower, so after the first epoch a step costs only e_v and the loss.
"""

from __future__ import annotations

import csv
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm

from pacl_core.backbone import load_backbone
from pacl_core.checkpoint import load_tensors, save_head, save_tensors
from pacl_core.errors import PACLError
from pacl_core.inputs import check_out_folder, check_pixels
from pacl_core.loss import DEFAULT_CHUNK_ELEMENTS
from pacl_core.pacl import VisionEmbedder
from pacl_core.train.cache import CACHE_DTYPES, TokenCache
from pacl_core.train.data import TRANSFORM, CaptionLoader, open_source
from pacl_core.train.distributed import (
    DistInfo,
    DistributedPACLLoss,
    all_gather_json,
    all_reduce_gradients,
    barrier,
    global_sum,
    init_distributed,
    shutdown,
)
from pacl_core.train.optim import cosine_lr, param_groups

STATE_FORMAT = "pacl-train-state"
GPU_LOSS_CHUNK = 1 << 26  # elements per loss-chunk intermediate on a GPU (256 MB in float32); the CPU uses 16 MB
PRECISIONS = ("auto", "fp32", "amp_bf16", "amp")
LOG_FIELDS = ("step", "epoch", "samples", "loss", "lr", "grad_norm", "images_per_s", "skipped", "elapsed_s")


@dataclass
class TrainConfig:
    """Every training option; the defaults are the paper's where it reports them (see docs)."""

    train_data: str
    out: str
    data_format: str = "auto"
    images: str | None = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str | None = None
    train_num_samples: int | None = None
    model: str = "vit-b-16"
    pretrained: str | None = None
    image_size: int | None = None
    epochs: int = 10
    batch_size: int = 4096
    lr: float = 5e-4
    wd: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup: int = 2000
    grad_clip: float = 1.0
    tau: float = 1.0
    logit_scale: float | None = None
    init: str = "projection"
    hidden_dim: int | None = None
    precision: str = "auto"
    seed: int = 0
    max_steps: int | None = None
    max_samples: int | None = None
    workers: int = 4
    backbone_chunk: int = 256
    loss_chunk: int | None = None
    save_every: int = 1000
    keep: int = 2
    log_every: int = 10
    tensorboard: bool = False
    resume: str | None = None
    device: str = "cpu"
    progress: bool = True
    cache_tokens: str | None = None
    cache_dtype: str = "fp16"


# Options that define the run: a resumed run must have the same values, or it would not be the same run.
RUN_KEYS = ("train_data", "data_format", "images", "csv_img_key", "csv_caption_key", "csv_separator",
            "train_num_samples", "model", "pretrained", "image_size", "epochs", "batch_size", "lr", "wd", "beta1",
            "beta2", "eps", "warmup", "grad_clip", "tau", "logit_scale", "init", "hidden_dim", "seed", "max_steps",
            "max_samples")


# ---- schedule and optimizer ---------------------------------------------------------------------------


def make_optimizer(head: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on the weight matrices only (pacl_core.train.optim.param_groups)."""
    return torch.optim.AdamW(param_groups(head, cfg.wd), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def resolve_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise PACLError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "amp_bf16" if device.startswith("cuda") else "fp32"
    if precision == "amp" and not device.startswith("cuda"):
        raise PACLError("precision 'amp' (float16 with loss scaling) needs a GPU; use fp32 or amp_bf16 on the CPU")
    return precision


def autocast(precision: str, device: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "amp_bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def build_head(backbone, cfg: TrainConfig) -> VisionEmbedder:
    head = VisionEmbedder(backbone.width, backbone.embed_dim, cfg.hidden_dim)
    if cfg.init == "projection":
        head.init_from_projection(backbone.model.visual.proj.detach().float().cpu())
    elif cfg.init != "random":
        raise PACLError(f"unknown --init '{cfg.init}'; use projection or random")
    return head


# ---- checkpoints --------------------------------------------------------------------------------------


def checkpoint_dir(out) -> Path:
    return Path(out) / "checkpoints"


def checkpoint_path(out, step: int) -> Path:
    return checkpoint_dir(out) / f"step_{step:08d}.safetensors"


def list_checkpoints(out) -> list[Path]:
    """Complete checkpoints (their JSON is written last), newest first."""
    return sorted(checkpoint_dir(out).glob("step_*.json"), reverse=True)


def save_state(path: Path, head, opt, scaler, step: int, total: int, loaders: list, cfg: TrainConfig,
               backbone) -> Path:
    """Head + AdamW moments as tensors; step, schedule, every rank's data position, scaler and config as JSON."""
    tensors = {f"head.{k}": v for k, v in head.state_dict().items()}
    sd = opt.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    meta = {"format": STATE_FORMAT, "version": 1, "step": step, "total_steps": total, "loaders": loaders,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "param_groups": groups, "config": asdict(cfg), "backbone": backbone.name,
            "head": {"in_dim": head.in_dim, "out_dim": head.out_dim, "hidden_dim": head.hidden_dim}}
    return save_tensors(path, tensors, meta)


def load_state(path: Path, head, opt, scaler) -> dict:
    """Restore head, optimizer and scaler from a checkpoint; returns its metadata."""
    tensors, meta = load_tensors(path, STATE_FORMAT)
    head_sd = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
    try:
        head.load_state_dict(head_sd)
    except RuntimeError:
        raise PACLError(f"{path}: its head does not fit this model ({meta.get('backbone')})") from None
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    groups = [dict(g, betas=tuple(g["betas"])) for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta


def find_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from: an explicit path, or the newest readable one in OUT (None: start fresh)."""
    if cfg.resume not in (None, "latest"):
        path = Path(cfg.resume)
        if not path.with_suffix(".json").is_file():
            raise PACLError(f"{path}: no such checkpoint (expected a step_*.safetensors with its .json)")
        return path.with_suffix(".safetensors")
    found = list_checkpoints(cfg.out)
    if cfg.resume is None:
        if found:
            raise PACLError(f"{cfg.out} already holds checkpoints; pass --resume to continue, or use another --out")
        return None
    for p in found:  # newest first; a damaged one (e.g. disk full) falls back to the previous interval
        try:
            load_tensors(p, STATE_FORMAT)
            return p.with_suffix(".safetensors")
        except PACLError as e:
            print(f"warning: skipping unreadable checkpoint: {e}")
    return None


def check_same_run(meta: dict, cfg: TrainConfig, path: Path) -> None:
    saved = meta.get("config", {})
    for k in RUN_KEYS:
        if k in saved and saved[k] != getattr(cfg, k):
            raise PACLError(f"{path.name}: was trained with {k}={saved[k]!r}, now {getattr(cfg, k)!r}; resume with the "
                            "same settings (only device, workers, logging and checkpoint options may change)")


def prune_checkpoints(out, keep: int) -> None:
    for old in list_checkpoints(out)[max(1, keep):]:
        old.unlink(missing_ok=True)  # the JSON first: a half-deleted checkpoint is never taken as complete
        old.with_suffix(".safetensors").unlink(missing_ok=True)


# ---- logging ------------------------------------------------------------------------------------------


class RunLog:
    """OUT/log.csv (rows after the resumed step are dropped, so the file always matches the run) and TensorBoard."""

    def __init__(self, out, start_step: int, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self.path = Path(out) / "log.csv"
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if start_step > 0 and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise PACLError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self.writer = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=start_step + 1)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=LOG_FIELDS).writerow(row)
        if self.writer is not None:
            for k in ("loss", "lr", "grad_norm", "images_per_s"):
                self.writer.add_scalar(f"train/{k}", row[k], row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_log(out) -> list[dict]:
    """OUT/log.csv as a list of rows with numbers."""
    with open(Path(out) / "log.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


# ---- one step -----------------------------------------------------------------------------------------


class Trainer:
    """Holds the frozen backbone, e_v, optimizer and loss; `step(batch, lr)` does one update on a global batch."""

    def __init__(self, backbone, head, cfg: TrainConfig, info: DistInfo, precision: str, cache=None):
        self.backbone, self.head, self.cfg, self.info, self.precision = backbone, head, cfg, info, precision
        self.cache = cache  # a TokenCache, or None: every step runs the frozen towers
        self.vit_images = self.text_captions = 0  # how much went through the frozen towers (this process)
        self.opt = make_optimizer(head, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "amp")
        chunk = cfg.loss_chunk or (GPU_LOSS_CHUNK if info.device.startswith("cuda") else DEFAULT_CHUNK_ELEMENTS)
        self.loss_fn = DistributedPACLLoss(cfg.tau, chunk_elements=chunk)
        self.logit_scale = float(cfg.logit_scale or backbone.logit_scale)

    @torch.no_grad()
    def vit_tokens(self, images_u8: torch.Tensor) -> torch.Tensor:
        """(n, S, S, 3) uint8 images -> patch tokens (n, T, D_v) of the frozen ViT."""
        bb, dev = self.backbone, self.info.device
        self.vit_images += images_u8.shape[0]
        x = bb.normalize(images_u8)  # (n, 3, S, S)
        with autocast(self.precision, dev):
            parts = [bb.patch_tokens(x[i:i + self.cfg.backbone_chunk])[0]
                     for i in range(0, x.shape[0], self.cfg.backbone_chunk)]
        return torch.cat(parts)  # (n, T, D_v)

    @torch.no_grad()
    def text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """(m, C) caption tokens -> unit text embeddings (m, D) of the frozen text tower."""
        self.text_captions += tokens.shape[0]
        with autocast(self.precision, self.info.device):
            text = self.backbone.model.encode_text(tokens.to(self.info.device, non_blocking=True), normalize=True)
        return text.float()  # (m, D)

    def frozen_features(self, images_u8: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, S, S, 3) uint8 images and (L, C) tokens -> patch tokens (L, T, D_v) and unit text embeddings (L, D)."""
        return self.vit_tokens(images_u8), self.text_embeddings(tokens)

    def cached_features(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's (L, T, D_v) patch tokens and (L, D) text embeddings: read from the token cache, and computed
        (then cached) only for what it lacks. Freshly computed values are used as computed (not re-read in the
        cache's dtype), so a first epoch is the uncached one exactly."""
        cache, dev = self.cache, self.info.device
        if any(not cache.has_image(k) for k in batch.keys):
            cache.refresh()  # other ranks may have committed shards since
        need = [i for i, k in enumerate(batch.keys) if not cache.has_image(k)]
        fresh = {}
        if need:  # each was decoded: a cached entry never disappears, so the loader saw it missing too
            row = {i: r for r, i in enumerate(i for i, d in enumerate(batch.decoded) if d)}
            tokens = self.vit_tokens(batch.images[[row[i] for i in need]])  # (n, T, D_v)
            fresh = {batch.keys[i]: t for i, t in zip(need, tokens)}
        wanted = list(dict.fromkeys([*batch.captions, *(c for i in need for c in batch.alternatives[i])]))
        missing = [c for c in wanted if not cache.has_text(c)]
        fresh_text = {}
        if missing:
            emb = self.text_embeddings(self.backbone.tokenizer(missing))  # (m, D)
            fresh_text = dict(zip(missing, emb))
        if fresh or fresh_text:
            cache.add(list(fresh), torch.stack(list(fresh.values())) if fresh else torch.empty(0),
                      list(fresh_text), torch.stack(list(fresh_text.values())) if fresh_text else torch.empty(0))
        patch = torch.stack([fresh[k] if k in fresh else cache.image_tokens([k])[0].to(dev)
                             for k in batch.keys])  # (L, T, D_v)
        text = torch.stack([fresh_text[c] if c in fresh_text else cache.text_embeddings([c])[0].to(dev)
                            for c in batch.captions])  # (L, D)
        return patch, text

    def step(self, batch, lr: float) -> tuple[float, float]:
        """One AdamW update of e_v on this rank's slice of the global batch -> (global loss, gradient norm)."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        if self.cache is None:
            patch_tokens, text = self.frozen_features(batch.images, batch.tokens)  # (L, T, D_v), (L, D)
        else:
            patch_tokens, text = self.cached_features(batch)  # (L, T, D_v), (L, D)
        with autocast(self.precision, self.info.device):
            patch_emb = self.head(patch_tokens)  # (L, T, D)
        share = self.loss_fn(patch_emb.float(), text, self.logit_scale)  # this rank's share of the global loss
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(share).backward()
        params = list(self.head.parameters())
        all_reduce_gradients(params)  # sum over ranks = the gradient of the global loss
        self.scaler.unscale_(self.opt)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        return float(global_sum(share)), float(norm)


# ---- the run ------------------------------------------------------------------------------------------


def plan_steps(num_samples: int, cfg: TrainConfig) -> tuple[int, int, int]:
    """(steps per epoch, total steps, warm-up steps) for a dataset of num_samples pairs."""
    per_epoch = max(1, num_samples // cfg.batch_size)
    total = cfg.epochs * per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = cfg.warmup if cfg.warmup < total else max(0, total // 10)
    return per_epoch, total, warmup


def check_config(cfg: TrainConfig, world: int) -> None:
    """Every setting that cannot work is a one-line PACLError before anything loads (the CLI's option names)."""
    if cfg.batch_size <= 0 or cfg.batch_size % world:
        raise PACLError(f"--batch-size {cfg.batch_size} (global) must be a positive multiple of the {world} processes")
    for name in ("epochs", "save_every", "log_every", "backbone_chunk", "keep", "tau", "eps"):
        if getattr(cfg, name) <= 0:
            raise PACLError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    for name in ("max_steps", "max_samples", "train_num_samples", "hidden_dim", "logit_scale", "loss_chunk"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise PACLError(f"--{name.replace('_', '-')} must be positive when given, got {getattr(cfg, name)}")
    if cfg.lr <= 0 or cfg.wd < 0 or cfg.warmup < 0:
        raise PACLError("--lr must be positive and --wd, --warmup non-negative")
    if cfg.workers < 0:
        raise PACLError(f"--workers must be 0 (load in this process) or more, got {cfg.workers}")
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise PACLError(f"--beta1 and --beta2 must be in [0, 1), got {cfg.beta1} and {cfg.beta2}")
    check_pixels("--image-size", cfg.image_size)
    if cfg.cache_dtype not in CACHE_DTYPES:
        raise PACLError(f"unknown --cache-dtype '{cfg.cache_dtype}'; use one of {', '.join(CACHE_DTYPES)}")
    if cfg.cache_tokens:
        check_out_folder(cfg.cache_tokens)
    check_out_folder(cfg.out)  # the device was checked by init_distributed, which runs first


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns a summary. Rank 0 writes every file."""
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        shutdown(info)


def _train(cfg: TrainConfig, info: DistInfo) -> dict:
    check_config(cfg, info.world)
    precision = resolve_precision(cfg.precision, info.device)
    resume_path = find_resume(cfg)
    torch.manual_seed(cfg.seed)
    backbone = load_backbone(cfg.model, pretrained=cfg.pretrained, device=info.device)
    size = cfg.image_size or backbone.native_size
    source = open_source(cfg.train_data, cfg.data_format, images=cfg.images, seed=cfg.seed, limit=cfg.max_samples,
                         csv_img_key=cfg.csv_img_key, csv_caption_key=cfg.csv_caption_key, csv_sep=cfg.csv_separator,
                         num_samples=cfg.train_num_samples)
    num_samples = len(source)
    if num_samples == 0:
        raise PACLError(f"{cfg.train_data}: no samples found")
    per_epoch, total, warmup = plan_steps(num_samples, cfg)
    cache = open_cache(cfg, backbone, size, precision, info.rank) if cfg.cache_tokens else None  # checks only
    head = build_head(backbone, cfg).to(info.device)
    trainer = Trainer(backbone, head, cfg, info, precision, cache)
    step, loader_state = 0, None
    if resume_path is not None:
        meta = load_state(resume_path, head, trainer.opt, trainer.scaler)
        check_same_run(meta, cfg, resume_path)
        if len(meta["loaders"]) != info.world:
            raise PACLError(f"{resume_path.name}: written by {len(meta['loaders'])} processes; resume with the same "
                            f"number (now {info.world}) to continue at the same data position")
        step, loader_state = int(meta["step"]), meta["loaders"][info.rank]
    local = cfg.batch_size // info.world
    loader = CaptionLoader(source, local, size, backbone.tokenizer, info.rank, info.world, workers=cfg.workers,
                           state=loader_state, is_cached=cache.create().has_image if cache else None)
    log = RunLog(cfg.out, step, cfg.tensorboard, info.is_main)
    if info.is_main:
        print(f"training e_v on {num_samples} pairs: {total} steps of {cfg.batch_size} ({per_epoch} per epoch, "
              f"{info.world} process{'es' if info.world > 1 else ''}, {precision}), warm-up {warmup}"
              + (f", resuming at step {step}" if step else ""))
    summary = _loop(trainer, loader, log, cfg, info, backbone, step, total, warmup, num_samples)
    log.close()
    return dict(summary, total_steps=total, num_samples=num_samples, out=str(cfg.out),
                frozen={"vit_images": trainer.vit_images, "text_captions": trainer.text_captions})


def open_cache(cfg: TrainConfig, backbone, size: int, precision: str, rank: int) -> TokenCache:
    """The token cache for this run's model, size, transform, precision and dtype; a folder made for other
    settings is refused here, before anything is written."""
    patch = backbone.patch_size
    if size % patch:
        raise PACLError(f"--cache-tokens needs --image-size to be a multiple of the patch size {patch}, got {size}")
    manifest = {"model": backbone.name, "pretrained": backbone.pretrained, "image_size": size,
                "transform": TRANSFORM, "precision": precision, "dtype": cfg.cache_dtype,
                "tokens": (size // patch) ** 2, "width": backbone.width, "embed_dim": backbone.embed_dim}
    return TokenCache(cfg.cache_tokens, manifest, rank=rank)


def _save(trainer, loader_state, step, total, cfg, info, backbone) -> None:
    """Every rank's data position gathered; rank 0 writes the train state and the current head."""
    if trainer.cache is not None:
        trainer.cache.flush()  # every sample before this checkpoint is in the cache: a resume need not redo it
    loaders = all_gather_json(loader_state, device=info.device if info.device.startswith("cuda") else "cpu")
    if info.is_main:
        save_state(checkpoint_path(cfg.out, step), trainer.head, trainer.opt, trainer.scaler, step, total, loaders,
                   cfg, backbone)
        prune_checkpoints(cfg.out, cfg.keep)
        save_head(Path(cfg.out) / "head.safetensors", trainer.head, backbone, tau=cfg.tau,
                  logit_scale=trainer.logit_scale,
                  training={"step": step, "total_steps": total, "train_data": cfg.train_data,
                            "batch_size": cfg.batch_size, "lr": cfg.lr, "epochs": cfg.epochs})
    barrier()


def _loop(trainer, loader, log, cfg, info, backbone, step, total, warmup, num_samples) -> dict:
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not (info.is_main and cfg.progress),
               dynamic_ncols=True)
    start, last_loss, state, t_prev = time.time(), float("nan"), loader.state, time.time()
    batches = iter(loader)
    try:
        while step < total:
            batch = next(batches)
            lr = cosine_lr(step, cfg.lr, warmup, total)
            loss, norm = trainer.step(batch, lr)
            if not math.isfinite(loss):
                raise PACLError(f"the loss became {loss} at step {step + 1}; lower --lr or use --precision fp32")
            step, state, last_loss = step + 1, batch.state, loss
            now = time.time()
            ips = cfg.batch_size / max(now - t_prev, 1e-9)
            t_prev = now
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}")
            if step % cfg.log_every == 0 or step == total:
                skipped = sum(state["skipped"].values())
                skipped = int(global_sum(torch.tensor(float(skipped), device=info.device)).item())
                log.write({"step": step, "epoch": round(step * cfg.batch_size / num_samples, 4),
                           "samples": step * cfg.batch_size, "loss": f"{loss:.6f}", "lr": f"{lr:.6e}",
                           "grad_norm": f"{norm:.6f}", "images_per_s": f"{ips:.1f}", "skipped": skipped,
                           "elapsed_s": f"{now - start:.1f}"})
            if step % cfg.save_every == 0 or step == total:
                _save(trainer, state, step, total, cfg, info, backbone)
    finally:
        batches.close()  # stops the prefetch thread
        bar.close()
    return {"steps": step, "final_loss": last_loss, "skipped": state["skipped"],
            "head": str(Path(cfg.out) / "head.safetensors")}


def config_from_args(args) -> TrainConfig:
    """argparse namespace -> TrainConfig (fields not on the namespace keep their defaults)."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
