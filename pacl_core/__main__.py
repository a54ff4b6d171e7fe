"""Entry point of `python -m pacl_core`."""

import sys

from pacl_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
