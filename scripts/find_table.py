"""Thin entry point: ``python scripts/find_table.py ARGS`` is ``ssmsteer study find-table ARGS``."""

import sys

from lm_eval_ssmsteer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["study", "find-table", *sys.argv[1:]]))
