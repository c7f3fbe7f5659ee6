"""``ssmsteer eval ...``: lm_eval's own command line with the plugin registered."""

from __future__ import annotations

import argparse
import sys


def run_lm_eval(lm_eval_args: list[str]) -> int:
    from lm_eval_ssmsteer import registration

    registration.register_model()
    registration.register_tasks()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *lm_eval_args]
    cli_evaluate()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="run lm_eval with the mamba-steered backend and the ssmsteer tasks registered",
        description="Everything after `eval` is passed to lm_eval unchanged, e.g. "
        "`ssmsteer eval --model mamba-steered --model_args pretrained=ref-mamba1 --tasks ssmsteer_quick`.",
        add_help=False,
    )
    p.set_defaults(func=lambda args: run_lm_eval(["--help"]))
