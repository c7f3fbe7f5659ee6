"""Thin entry point: ``python scripts/score_reference.py ARGS`` is ``ssmsteer study reference ARGS``."""

import sys

from lm_eval_ssmsteer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["study", "reference", *sys.argv[1:]]))
