"""The options that several subcommands share, and the parser class they all use."""

from __future__ import annotations

import argparse

from pacl_core.backbone import load_backbone
from pacl_core.errors import PACLError
from pacl_core.hub import is_hub_spec, parse_hub_spec


class Parser(argparse.ArgumentParser):
    """argparse without matching option prefixes, so a misspelt `--image x.png` is not read as `--image-size`.
    Subcommand parsers inherit it (argparse builds them with the parent's class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def add_model_args(p: argparse.ArgumentParser, default_model: str = "vit-b-16", group=None, templates: bool = True,
                   image_size_help: str = "short side in pixels the image is resized to, aspect ratio kept "
                                           "(default: 448 for ViT-B/16, the native size for toy)"
                   ) -> argparse._ArgumentGroup:
    """The options every command that loads a backbone shares (in `group`, or a new "model" group)."""
    g = group or p.add_argument_group("model")
    g.add_argument("--model", default=default_model,
                   help="'toy' (embedded, offline), 'vit-b-16' (OpenAI ViT-B/16) or an open_clip NAME[:TAG]; "
                        "NAME:none gives random weights (default: %(default)s)")
    g.add_argument("--pretrained", default=None,
                   help="pretrained tag or local .safetensors file, overriding the one in --model")
    g.add_argument("--image-size", type=int, default=None, help=image_size_help)
    if templates:
        g.add_argument("--templates", default=None, help="prompt template set: imagenet7, imagenet80, single, bare")
    g.add_argument("--device", default="cpu",
                   help="cpu or cuda (cuda:LOCAL_RANK under torchrun) (default: %(default)s)")
    return g


def add_shifts_arg(p, default: int | None = 1) -> None:
    """--shifts M, shared by the commands that segment (pacl_core.segment.shifted_scores)."""
    p.add_argument("--shifts", type=int, default=default, metavar="M",
                   help="average M x M passes of the image shifted by fractions of a patch: smoother, less noisy "
                        "maps for M^2 times the compute (default: 1, one pass)")


def check_shifts_arg(shifts: int | None) -> None:
    """Refuse --shifts below 1 before any model loads (the upper bound, the patch size, needs the model)."""
    if shifts is not None and shifts < 1:
        raise PACLError(f"--shifts must be at least 1, got {shifts}")


HEAD_HELP = ("PACL head: FILE.safetensors (with FILE.json beside it) or hf-hub:ORG/REPO[@REVISION][:FILE] "
             "(downloaded once into the Hugging Face cache; FILE defaults to head.safetensors)")


def check_head_arg(head: str | None) -> None:
    """Refuse a malformed hf-hub: spec before any model loads (the download itself happens with the head's load)."""
    if is_hub_spec(head):
        parse_hub_spec(head)


def backbone_from_args(args):
    return load_backbone(args.model, pretrained=args.pretrained, image_size=args.image_size,
                         device=args.device, templates=args.templates)
