"""A disk cache of the frozen backbone's outputs for training: per image its patch tokens, per caption its text
embedding, so that after the first epoch training runs only the small e_v.

Layout of `--cache-tokens DIR`:
    DIR/manifest.json                  model, pretrained tag, image size, transform, precision, dtype, shapes
    DIR/rank-RRRRR/NNNNNN.tokens.npy   (n, T, D_v) patch tokens of n images (float16 or float32)
    DIR/rank-RRRRR/NNNNNN.text.npy     (m, D) unit text embeddings of m captions
    DIR/rank-RRRRR/NNNNNN.json         the n image keys and m captions, in row order (written last: the commit)

Each process (rank under torchrun) writes its own folder and reads every folder, through numpy memory maps.
Every file is written under a temporary name and renamed, and a shard counts only once its JSON exists, so a
killed run leaves no half shard; its pending entries are written at every training checkpoint, so `--resume`
finds every sample before the checkpoint cached and recomputes only the rest. Nothing is pickled.

A cache is only valid for one deterministic image transform (decode, short side to S with bicubic, centre crop:
pacl_core.train.data.TRANSFORM): random augmentations would need new tokens every epoch, so caching refuses them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pacl_core.checkpoint import _atomic_write
from pacl_core.errors import PACLError

CACHE_FORMAT = "pacl-token-cache"
CACHE_DTYPES = {"fp16": np.float16, "fp32": np.float32}
SHARD_BYTES = 256 << 20  # pending entries are written as a shard once they reach this size
MANIFEST_KEYS = ("model", "pretrained", "image_size", "transform", "precision", "dtype", "tokens", "width",
                 "embed_dim")


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    _atomic_write(path, write)


def _save_json(path: Path, obj) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj)))


def check_manifest(root: Path, manifest: dict) -> None:
    """Refuse a cache folder made for another model, size, transform, precision or dtype (one line)."""
    path = root / "manifest.json"
    if not path.is_file():
        if root.is_dir() and any(root.iterdir()):
            raise PACLError(f"{root}: not a token cache (no manifest.json) and not empty; give a new or empty folder")
        return
    try:
        found = json.loads(path.read_text())
        assert isinstance(found, dict) and found.get("format") == CACHE_FORMAT
    except (ValueError, AssertionError, UnicodeDecodeError):
        raise PACLError(f"{path}: not a PACL token cache manifest") from None
    diff = [f"{k} {found.get(k)!r} (now {manifest[k]!r})" for k in MANIFEST_KEYS if found.get(k) != manifest[k]]
    if diff:
        raise PACLError(f"{root}: this token cache was made with another setting: {'; '.join(diff)}; use another "
                        "--cache-tokens folder")


class TokenCache:
    """Patch tokens by image key and text embeddings by caption, across every rank's shards; this rank appends."""

    def __init__(self, root, manifest: dict, rank: int = 0, shard_bytes: int = SHARD_BYTES):
        self.root, self.manifest = Path(root), dict(manifest, format=CACHE_FORMAT, version=1)
        if manifest["dtype"] not in CACHE_DTYPES:
            raise PACLError(f"unknown --cache-dtype '{manifest['dtype']}'; use fp16 or fp32")
        check_manifest(self.root, self.manifest)
        self.dtype = CACHE_DTYPES[manifest["dtype"]]
        self.rank_dir = self.root / f"rank-{rank:05d}"
        self.shard_bytes = shard_bytes
        self.images: dict[str, tuple] = {}  # key -> (array, row)
        self.texts: dict[str, tuple] = {}  # caption -> (array, row)
        self._seen: set[Path] = set()
        self._pending_img: dict[str, np.ndarray] = {}  # (T, D_v)
        self._pending_txt: dict[str, np.ndarray] = {}  # (D,)
        self._pending_bytes = 0
        self._next = 0

    def create(self) -> TokenCache:
        """Write the manifest (every rank writes the same one, atomically) and read what is cached already."""
        self.rank_dir.mkdir(parents=True, exist_ok=True)
        if not (self.root / "manifest.json").is_file():
            _save_json(self.root / "manifest.json", self.manifest)
        for tmp in self.rank_dir.glob(".*.tmp"):  # a killed writer's leftovers: never part of a shard
            tmp.unlink(missing_ok=True)
        own = sorted(self.rank_dir.glob("*.json"))
        self._next = int(own[-1].stem) + 1 if own else 0
        self.refresh()
        return self

    def refresh(self) -> None:
        """Map the shards committed since the last look (other ranks keep writing theirs)."""
        for index in sorted(self.root.glob("rank-*/*.json")):
            if index in self._seen:
                continue
            self._seen.add(index)
            meta = json.loads(index.read_text())
            stem = index.with_suffix("")
            if meta["images"]:
                tokens = np.load(f"{stem}.tokens.npy", mmap_mode="r", allow_pickle=False)  # (n, T, D_v)
                for row, key in enumerate(meta["images"]):
                    self.images.setdefault(key, (tokens, row))
            if meta["captions"]:
                text = np.load(f"{stem}.text.npy", mmap_mode="r", allow_pickle=False)  # (m, D)
                for row, cap in enumerate(meta["captions"]):
                    self.texts.setdefault(cap, (text, row))

    # ---- reading ------------------------------------------------------------------------------
    def has_image(self, key: str) -> bool:
        return key in self.images or key in self._pending_img

    def has_text(self, caption: str) -> bool:
        return caption in self.texts or caption in self._pending_txt

    def image_tokens(self, keys: list[str]) -> torch.Tensor:
        """(n, T, D_v) float32 patch tokens of cached images."""
        rows = [self._pending_img[k] if k in self._pending_img else self.images[k][0][self.images[k][1]]
                for k in keys]
        return torch.from_numpy(np.stack(rows).astype(np.float32))

    def text_embeddings(self, captions: list[str]) -> torch.Tensor:
        """(m, D) float32 text embeddings of cached captions."""
        rows = [self._pending_txt[c] if c in self._pending_txt else self.texts[c][0][self.texts[c][1]]
                for c in captions]
        return torch.from_numpy(np.stack(rows).astype(np.float32))

    # ---- writing ------------------------------------------------------------------------------
    def add(self, keys: list[str], tokens: torch.Tensor, captions: list[str], text: torch.Tensor) -> None:
        """Remember (n, T, D_v) tokens of `keys` and (m, D) embeddings of `captions`; a shard is written when
        the pending entries reach shard_bytes."""
        tokens = tokens.detach().float().cpu().numpy().astype(self.dtype)  # (n, T, D_v)
        text = text.detach().float().cpu().numpy().astype(self.dtype)  # (m, D)
        for k, t in zip(keys, tokens):
            if not self.has_image(k):
                self._pending_img[k] = t
                self._pending_bytes += t.nbytes
        for c, e in zip(captions, text):
            if not self.has_text(c):
                self._pending_txt[c] = e
                self._pending_bytes += e.nbytes
        if self._pending_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the pending entries as one shard: the arrays first, its JSON last (the commit)."""
        if not self._pending_img and not self._pending_txt:
            return
        stem = self.rank_dir / f"{self._next:06d}"
        keys, caps = list(self._pending_img), list(self._pending_txt)
        if keys:
            _save_npy(Path(f"{stem}.tokens.npy"), np.stack([self._pending_img[k] for k in keys]))
        if caps:
            _save_npy(Path(f"{stem}.text.npy"), np.stack([self._pending_txt[c] for c in caps]))
        _save_json(Path(f"{stem}.json"), {"images": keys, "captions": caps})
        self._next += 1
        self._pending_img, self._pending_txt, self._pending_bytes = {}, {}, 0
        self.refresh()
