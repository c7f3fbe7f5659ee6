"""Thin entry point: ``python scripts/eval_stable.py ARGS`` is ``ssmsteer study stable-eval ARGS``."""

import sys

from lm_eval_ssmsteer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["study", "stable-eval", *sys.argv[1:]]))
