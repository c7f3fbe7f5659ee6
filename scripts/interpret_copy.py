"""Thin entry point: ``python scripts/interpret_copy.py ARGS`` is ``ssmsteer study copy ARGS``."""

import sys

from lm_eval_ssmsteer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["study", "copy", *sys.argv[1:]]))
