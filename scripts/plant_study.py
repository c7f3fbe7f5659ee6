"""Thin entry point: ``python scripts/plant_study.py ARGS`` is ``ssmsteer study plant ARGS``."""

import sys

from lm_eval_ssmsteer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["study", "plant", *sys.argv[1:]]))
