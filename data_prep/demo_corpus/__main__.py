"""``python -m data_prep.demo_corpus ...``: the same as ``maskproxy demo-corpus ...``."""

import sys

from maskproxy_losses.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo-corpus", *sys.argv[1:]]))
