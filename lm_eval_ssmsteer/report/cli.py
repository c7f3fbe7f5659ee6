"""``ssmsteer report RESULTS... --out DIR``: a leaderboard from lm-eval results files or folders; with
``--baseline RUN``, every run paired with that run on the same documents."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def _metric_choice(text: str) -> tuple[str, str]:
    task, sep, metric = text.partition("=")
    if not sep or not task or not metric:
        raise argparse.ArgumentTypeError(f"expected TASK=METRIC (e.g. hellaswag=acc_norm), got {text!r}")
    return task, metric


def make_report(
    results: Sequence[str | Path],
    out: Path,
    *,
    title: str = "ssmsteer leaderboard",
    metrics: Mapping[str, str] | None = None,
    baseline: str | Path | None = None,
) -> int:
    """Write the report of ``results`` into ``out`` and print its Markdown; 2 (and a message on stderr)
    when the inputs cannot be reported."""
    from lm_eval_ssmsteer.report.leaderboard import build_leaderboard
    from lm_eval_ssmsteer.report.results import ResultsError, load_runs, merge_runs
    from lm_eval_ssmsteer.report.writers import MARKDOWN, write_report

    try:
        base = None
        if baseline is not None:
            base_runs, _ = merge_runs(load_runs([baseline]))
            if len(base_runs) != 1:
                found = "; ".join(f"{r.model_label} [{r.backend}] {r.spec_label}" for r in base_runs)
                raise ValueError(f"--baseline {baseline}: holds {len(base_runs)} runs ({found}); give one")
            base = base_runs[0]
            results = [*results, baseline]
        board = build_leaderboard(load_runs(results), metrics or {}, baseline=base)
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
    written, no_plots = write_report(board, out, title=title)
    if no_plots:
        print(f"note: {no_plots}", file=sys.stderr)
    print((out / MARKDOWN).read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    return make_report(
        args.results, args.out, title=args.title, metrics=dict(args.metric), baseline=args.baseline
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="leaderboard (Markdown, CSV, HTML, PNG plots) from lm-eval results",
        description="Reads lm-eval results files (any backend; folders are searched for results_*.json) "
        "and writes a leaderboard with one row per (model, steering spec): leaderboard.md, "
        "leaderboard.csv, scores.csv, report.html and the plots as PNG. With --baseline, every run is "
        "also compared with that run on the same documents (paired.csv, and a table of paired "
        "differences): the runs must have been made with --log_samples.",
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
    p.add_argument(
        "--baseline",
        metavar="RUN",
        help="a results file or folder holding one run (e.g. the unsteered one): every other run gets its "
        "paired difference from it on the same documents, a 95%% paired bootstrap interval and an exact "
        "McNemar (0/1 scores) or sign test p-value, with Holm's correction over all of them",
    )
    p.set_defaults(func=run)
