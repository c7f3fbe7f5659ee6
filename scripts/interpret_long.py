"""Thin entry point: ``python scripts/interpret_long.py ARGS`` is ``ssmsteer study long ARGS``."""

import sys

from lm_eval_ssmsteer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["study", "long", *sys.argv[1:]]))
