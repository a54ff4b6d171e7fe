"""A Hugging Face cache laid out on disk the way huggingface_hub writes it (refs/, snapshots/, .no_exist/), so the
real hf_hub_download finds cached heads offline. Used by the Hub tests; no network is involved."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def cache_repo(hub_cache: Path, repo: str, files: dict[str, Path], revision: str = "main",
               absent: tuple[str, ...] = ()) -> Path:
    """Put `files` ({name in repo: local file}) into the cache as revision `revision` of model repo `repo`;
    `absent` names files the Hub answered 404 for (recorded under .no_exist, as huggingface_hub does)."""
    folder = Path(hub_cache) / ("models--" + repo.replace("/", "--"))
    sha = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()  # 40 hex digits, like a commit
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / revision).write_text(sha)
    snap = folder / "snapshots" / sha
    for name, src in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, snap / name)
    for name in absent:
        (folder / ".no_exist" / sha / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / ".no_exist" / sha / name).touch()
    return snap
