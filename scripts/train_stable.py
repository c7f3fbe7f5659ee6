"""Thin entry point: ``python scripts/train_stable.py ARGS`` is ``ssmsteer study stable-train ARGS``."""

import sys

from lm_eval_ssmsteer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["study", "stable-train", *sys.argv[1:]]))
