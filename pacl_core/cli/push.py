"""`python -m pacl_core push HEAD.safetensors --repo ORG/REPO`: publish a PACL head on the Hugging Face Hub.

Uploads head.safetensors, head.json and a generated model card (README.md with Hub metadata, the training
settings from the head's JSON and, with --metrics, the evaluation table). `--dry-run DIR` writes exactly that
folder and uploads nothing. Authentication is huggingface_hub's own (HF_TOKEN or `hf auth login`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pacl_core.checkpoint import load_head, meta_path
from pacl_core.errors import PACLError
from pacl_core.hub import check_repo_id, push_folder
from pacl_core.inputs import check_out_folder
from pacl_core.modelcard import card_text, read_metrics

UPLOAD_NAME = "head"  # the files are uploaded as head.safetensors + head.json, so hf-hub:ORG/REPO finds them


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="publish a PACL head on the Hugging Face Hub (head, JSON, model card)",
                       description="Upload a trained PACL head with a generated model card to a Hub model "
                                   "repository (created if needed). Log in first: hf auth login, or set HF_TOKEN.")
    p.add_argument("head", help="the head: HEAD.safetensors with HEAD.json beside it (e.g. RUN/head.safetensors)")
    p.add_argument("--repo", required=True, help="Hub model repository ORG/REPO (or USER/REPO)")
    p.add_argument("--metrics", default=None, help="metrics.json from `evaluate --out DIR` for the card's table")
    p.add_argument("--license", default="mit", help="licence for the card's metadata (default: %(default)s)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--dry-run", default=None, metavar="DIR",
                   help="write the folder that would be uploaded into DIR (new or empty) and upload nothing")
    p.set_defaults(run=run)


def stage(head_path, repo: str, metrics=None, license: str = "mit", folder=None) -> Path:
    """Write head.safetensors, head.json and README.md into `folder` (a fresh temporary one by default)."""
    check_repo_id(repo)
    head = load_head(head_path)  # a readable PACL head, its tensors matching its JSON
    rows = read_metrics(metrics) if metrics else None
    card = card_text(head.meta, repo, license=license, metrics=rows)
    folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="pacl-push-"))
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(head_path, folder / f"{UPLOAD_NAME}.safetensors")
    shutil.copyfile(meta_path(head_path), folder / f"{UPLOAD_NAME}.json")
    (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


def _dry_run(args) -> int:
    """Stage in a temporary folder, then move it to DIR: a bad input leaves DIR untouched."""
    out = check_out_folder(args.dry_run)
    if out.exists() and any(out.iterdir()):
        raise PACLError(f"{out}: --dry-run needs a new or empty folder")
    tmp = stage(args.head, args.repo, args.metrics, args.license)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        shutil.move(str(tmp), str(out))  # a rename on one file system
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"dry run: wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}; nothing was uploaded")
    return 0


def run(args) -> int:
    path = Path(args.head)
    if path.suffix != ".safetensors":
        raise PACLError(f"{path}: give the head's .safetensors file (its .json must be beside it)")
    if args.dry_run:
        return _dry_run(args)
    folder = stage(path, args.repo, args.metrics, args.license)
    try:
        url = push_folder(folder, args.repo, private=args.private, message=f"Upload PACL head {path.name}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"pushed {args.repo}: {url}\nuse it with --head hf-hub:{args.repo}")
    return 0
