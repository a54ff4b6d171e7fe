"""Checkpoints: tensors in safetensors, metadata in a small JSON beside them. No pickle is ever loaded.

A PACL head `X.safetensors` has `X.json` with its backbone, dims, tau, logit scale, training info and the SHA-256
of its tensors (checked on load; files written before it was recorded load without the check).
`load_head` also takes `hf-hub:ORG/REPO[@REVISION][:FILE]`: the pair is downloaded (cached) by pacl_core.hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pacl_core.errors import PACLError
from pacl_core.hub import is_hub_spec, resolve_head_path
from pacl_core.pacl import VisionEmbedder

HEAD_FORMAT = "pacl-head"
FORMAT_VERSION = 1


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file. A folder that
    cannot be written (any more) is one PACLError line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise PACLError(f"{path}: cannot write there ({e.strerror or e})") from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise PACLError(f"{path}: cannot write there ({e.strerror or e})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def meta_path(path) -> Path:
    return Path(path).with_suffix(".json")


SHA_KEY = "tensors_sha256"  # the JSON's record of the tensors it was written with


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order: what the file's tensors are,
    whatever the safetensors file's own layout."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Save tensors to PATH.safetensors and meta to PATH.json, both atomically; the JSON records the tensors'
    SHA-256 (`tensors_sha256`), which load_tensors checks."""
    path = Path(path).with_suffix(".safetensors")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {**meta, SHA_KEY: tensors_sha256(tensors)}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp))
    _atomic_write(meta_path(path), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True)))
    return path


def load_tensors(path, expect_format: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read PATH.safetensors + PATH.json (either path may be given); one-line errors for every failure."""
    path = Path(path)
    path = path.with_suffix(".safetensors") if path.suffix == ".json" else path
    if not path.is_file():
        raise PACLError(f"{path}: no such checkpoint file")
    if path.suffix != ".safetensors":
        raise PACLError(f"{path}: checkpoints must be .safetensors files (pickled checkpoints are refused)")
    mpath = meta_path(path)
    if not mpath.is_file():
        raise PACLError(f"{path}: its metadata file {mpath.name} is missing")
    try:
        meta = json.loads(mpath.read_text())
        assert isinstance(meta, dict)
    except (ValueError, AssertionError, UnicodeDecodeError):
        raise PACLError(f"{mpath}: metadata is not a valid JSON object") from None
    if expect_format is not None and meta.get("format") != expect_format:
        raise PACLError(f"{path}: is a '{meta.get('format')}' checkpoint, expected '{expect_format}'")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as e:
        raise PACLError(f"{path}: truncated or not a safetensors file ({type(e).__name__})") from None
    recorded = meta.get(SHA_KEY)
    if recorded is not None and recorded != tensors_sha256(tensors):  # heads without a record (older) still load
        raise PACLError(f"{path}: its tensors do not match the SHA-256 recorded in {mpath.name} (the file was "
                        "changed or damaged after it was saved)")
    return tensors, meta


def save_head(path, head: VisionEmbedder, backbone=None, tau: float = 1.0, logit_scale: float | None = None,
              training: dict | None = None) -> Path:
    """Save a PACL vision embedder with everything needed to check it against a backbone later."""
    meta = {
        "format": HEAD_FORMAT, "version": FORMAT_VERSION,
        "backbone": getattr(backbone, "name", None), "pretrained": getattr(backbone, "pretrained", None),
        "in_dim": head.in_dim, "out_dim": head.out_dim, "hidden_dim": head.hidden_dim,
        "tau": tau, "logit_scale": logit_scale, "training": training or {},
    }
    return save_tensors(path, head.state_dict(), meta)


def load_head(path, backbone=None) -> VisionEmbedder:
    """Load a PACL head from a file or an hf-hub: spec; `head.meta` holds its metadata. Refuses heads made for
    another backbone."""
    local = resolve_head_path(path)
    try:
        tensors, meta = load_tensors(local, HEAD_FORMAT)
    except PACLError as e:
        if not is_hub_spec(path):
            raise
        shown = str(e).replace(str(meta_path(local)), f"{path} (its .json)").replace(str(local), path)
        raise PACLError(shown) from None  # the spec the user typed, not the cache's path
    try:
        in_dim, out_dim, hidden = int(meta["in_dim"]), int(meta["out_dim"]), int(meta["hidden_dim"])
    except (KeyError, TypeError, ValueError):
        raise PACLError(f"{path}: metadata lacks in_dim / out_dim / hidden_dim") from None
    if backbone is not None:
        if meta.get("backbone") not in (None, backbone.name):
            raise PACLError(f"{path}: this head was trained for {meta['backbone']}, not {backbone.name}")
        if (in_dim, out_dim) != (backbone.width, backbone.embed_dim):
            raise PACLError(f"{path}: head maps {in_dim}->{out_dim} but {backbone.name} needs "
                            f"{backbone.width}->{backbone.embed_dim}")
    head = VisionEmbedder(in_dim, out_dim, hidden)
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != got:
        raise PACLError(f"{path}: tensors do not match a {in_dim}->{out_dim} PACL head")
    head.load_state_dict(tensors)
    head.meta = meta
    return head.eval()
