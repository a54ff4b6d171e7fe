"""`python -m pacl_core COMMAND ...`: the command line. Each subcommand lives in pacl_core/cli/, the options
they share in pacl_core/cli/args.py."""

from __future__ import annotations

import sys

from pacl_core.cli import evaluate, push, segment, toy, train
from pacl_core.cli.args import Parser
from pacl_core.errors import PACLError

COMMANDS = (segment, evaluate, train, toy, push)


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m pacl_core",
        description="Open-vocabulary segmentation with CLIP and PACL patch alignment.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
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
