"""``ssmsteer eval ...``: lm_eval's own command line with the plugin registered (its errors in one line,
``cli_errors``)."""

from __future__ import annotations

import argparse
import sys


def run_lm_eval(lm_eval_args: list[str]) -> int:
    # `import lm_eval_ssmsteer` installed the import watcher (``_autoload``), .pth hook or not: lm_eval's
    # registry, task manager and command line are registered as lm_eval imports them, and no sooner (a
    # mistake in the model_args is reported before torch or the backends load).
    from lm_eval.__main__ import cli_evaluate

    from lm_eval_ssmsteer.lmeval import registration

    registration.register_if_loaded()

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
