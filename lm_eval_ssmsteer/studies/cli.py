"""``ssmsteer study NAME``: the experiments behind the measured numbers in docs/ (finder.md,
interpret.md, stable_mamba.md). Each study is a module of ``lm_eval_ssmsteer.studies`` with
``add_arguments(parser)`` and ``run(args)`` (the exit status); its docstring is its --help, the
first line a summary."""

from __future__ import annotations

import argparse
import importlib
import sys

from lm_eval_ssmsteer.studies import StudyArgumentError

# command -> study module; the order is the order of `ssmsteer study --help`
STUDIES = {
    "find-table": "lm_eval_ssmsteer.studies.find_table",
    "score-specs": "lm_eval_ssmsteer.studies.score_specs",
    "survey": "lm_eval_ssmsteer.studies.survey",
    "plant": "lm_eval_ssmsteer.studies.plant",
    "damp": "lm_eval_ssmsteer.studies.damping",
    "needle": "lm_eval_ssmsteer.studies.needle",
    "copy": "lm_eval_ssmsteer.studies.copy_task",
    "long": "lm_eval_ssmsteer.studies.long_input",
    "stable-train": "lm_eval_ssmsteer.studies.stable_train",
    "stable-eval": "lm_eval_ssmsteer.studies.stable_eval",
    "reference": "lm_eval_ssmsteer.studies.reference_scores",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="the experiments behind the numbers in docs/ (finder, interpretation, Stable-Mamba)",
        description="Run an experiment behind the measured numbers in docs/ (finder.md, interpret.md, "
        "stable_mamba.md); `ssmsteer study STUDY --help` says what each measures and writes.",
    )
    studies = parser.add_subparsers(dest="study", metavar="STUDY", required=True)
    for name, module_name in STUDIES.items():
        module = importlib.import_module(module_name)
        study = studies.add_parser(
            name,
            help=module.__doc__.splitlines()[0],
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(study)
        study.set_defaults(func=_saying_argument_errors(module.run))


def _saying_argument_errors(run):
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except StudyArgumentError as exc:
            print(f"ssmsteer study {args.study}: error: {exc}", file=sys.stderr)
            return 2

    return wrapped
