"""The ``ssmsteer`` command: one entry point whose subcommands live beside the code they drive.

Each subcommand module exposes ``add_parser(subparsers)``, which registers its parser and sets
``func`` (taking the parsed args, returning an exit code). ``eval`` is lm_eval's own CLI with the
plugin loaded.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module providing add_parser(); modules are imported only when listed here.
SUBCOMMANDS = {
    "eval": "lm_eval_ssmsteer.lmeval.cli_eval",
    "spec": "lm_eval_ssmsteer.cli_spec",
}
OPTIONAL_SUBCOMMANDS = {
    "find": "lm_eval_ssmsteer.finder.cli",
    "report": "lm_eval_ssmsteer.report.cli",
    "regress": "lm_eval_ssmsteer.report.cli_regress",
    "interpret": "lm_eval_ssmsteer.interpret.cli",
    "study": "lm_eval_ssmsteer.studies.cli",
    "sweep": "lm_eval_ssmsteer.sweep.cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only`` (a subcommand's name), that subcommand alone, importing only its
    module: the others' modules (scipy's statistics among them) cost a second or two of start-up each run."""
    parser = argparse.ArgumentParser(
        prog="ssmsteer",
        description="Find and steer activation bottlenecks of Mamba-family models; evaluate with lm-eval.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in {**SUBCOMMANDS, **OPTIONAL_SUBCOMMANDS}.items():
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if name in SUBCOMMANDS or not exc.name or not module.startswith(exc.name):
                raise
            continue
        mod.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "eval":
        # lm_eval parses sys.argv itself; hand it everything after `eval` untouched.
        from lm_eval_ssmsteer.lmeval.cli_eval import run_lm_eval

        return run_lm_eval(argv[1:])
    named = argv[0] if argv and argv[0] in {**SUBCOMMANDS, **OPTIONAL_SUBCOMMANDS} else None
    parser = build_parser(named)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)
