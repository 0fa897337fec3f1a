"""``python -m tongban.ops.cli``: the ``tongban`` command line."""

import sys

from tongban.ops.cli import main

if __name__ == "__main__":
    sys.exit(main())
