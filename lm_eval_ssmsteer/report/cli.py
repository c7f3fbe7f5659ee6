"""``ssmsteer report RESULTS... --out DIR``: a leaderboard from lm-eval results files or folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _metric_choice(text: str) -> tuple[str, str]:
    task, sep, metric = text.partition("=")
    if not sep or not task or not metric:
        raise argparse.ArgumentTypeError(f"expected TASK=METRIC (e.g. hellaswag=acc_norm), got {text!r}")
    return task, metric


def run(args: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.report.leaderboard import build_leaderboard
    from lm_eval_ssmsteer.report.results import ResultsError, load_runs
    from lm_eval_ssmsteer.report.writers import MARKDOWN, write_report

    try:
        board = build_leaderboard(load_runs(args.results), dict(args.metric))
    except (ResultsError, ValueError) as exc:
        print(f"ssmsteer report: {exc}", file=sys.stderr)
        return 2
    for old, _ in board.superseded:
        print(
            f"note: {old.source}: '{old.name}' superseded by a newer run of the same model and spec",
            file=sys.stderr,
        )
    for warning in board.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    written, no_plots = write_report(board, args.out, title=args.title)
    if no_plots:
        print(f"note: {no_plots}", file=sys.stderr)
    print((args.out / MARKDOWN).read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="leaderboard (Markdown, CSV, HTML, PNG plots) from lm-eval results",
        description="Reads lm-eval results files (any backend; folders are searched for results_*.json) "
        "and writes a leaderboard with one row per (model, steering spec): leaderboard.md, "
        "leaderboard.csv, scores.csv, report.html and the plots as PNG.",
    )
    p.add_argument("results", nargs="+", help="results_*.json files or folders holding them")
    p.add_argument("--out", type=Path, required=True, help="folder to write the report into")
    p.add_argument("--title", default="ssmsteer leaderboard")
    p.add_argument(
        "--metric",
        type=_metric_choice,
        action="append",
        default=[],
        metavar="TASK=METRIC",
        help="the metric a task's column shows (default: its first reported metric); repeatable",
    )
    p.set_defaults(func=run)
