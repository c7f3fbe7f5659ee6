"""Thin entry point: ``python scripts/interpret_needle.py ARGS`` is ``ssmsteer study needle ARGS``."""

import sys

from lm_eval_ssmsteer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["study", "needle", *sys.argv[1:]]))
