"""`python -m pacl_core COMMAND ...`: the command line. Each subcommand lives in pacl_core/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import PACLError

COMMANDS = ("segment", "evaluate", "train", "toy", "push")


class Parser(argparse.ArgumentParser):
    """argparse without matching option prefixes, so a misspelt `--image x.png` is not read as `--image-size`.
    Subcommand parsers inherit it (argparse builds them with the parent's class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def add_model_args(p: argparse.ArgumentParser, default_model: str = "vit-b-16") -> None:
    """The options every command that loads a backbone shares."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default_model,
                   help="'toy' (embedded, offline), 'vit-b-16' (OpenAI ViT-B/16) or an open_clip NAME[:TAG]; "
                        "NAME:none gives random weights (default: %(default)s)")
    g.add_argument("--pretrained", default=None,
                   help="pretrained tag or local .safetensors file, overriding the one in --model")
    g.add_argument("--image-size", type=int, default=None,
                   help="input size in pixels (default: 448 for ViT-B/16, the native size for toy)")
    g.add_argument("--templates", default=None, help="prompt template set: imagenet7, imagenet80, single, bare")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")


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
    from .hub import is_hub_spec, parse_hub_spec

    if is_hub_spec(head):
        parse_hub_spec(head)


def backbone_from_args(args):
    from .backbone import load_backbone

    return load_backbone(args.model, pretrained=args.pretrained, image_size=args.image_size,
                         device=args.device, templates=args.templates)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m pacl_core",
        description="Open-vocabulary segmentation with CLIP and PACL patch alignment.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"pacl_core.commands.{name}").add_parser(sub)
    return parser


def run_reporting_errors(work) -> int:
    """Run work() -> exit code (None = 0); a user's mistake (PACLError) or a file-system failure under a running
    command (disk full, a folder removed) becomes one line on stderr and its exit code, never a traceback."""
    try:
        return int(work() or 0)
    except PACLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename}" if e.filename else f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors(lambda: args.run(args))
