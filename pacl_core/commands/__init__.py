"""One module per CLI subcommand, each with add_parser(subparsers) that sets `run`."""
