"""``python -m maskproxy_losses ...``: the ``maskproxy`` command (see :mod:`.cli`)."""

import sys

from maskproxy_losses.cli import main

if __name__ == "__main__":
    sys.exit(main())
