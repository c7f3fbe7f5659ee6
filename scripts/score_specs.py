"""Thin entry point: ``python scripts/score_specs.py ARGS`` is ``ssmsteer study score-specs ARGS``."""

import sys

from lm_eval_ssmsteer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["study", "score-specs", *sys.argv[1:]]))
