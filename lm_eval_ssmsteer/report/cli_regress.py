"""``ssmsteer regress --baseline FILE --current RESULTS``: exit 1 when a metric got worse beyond its
statistical tolerance (or disappeared), 2 when the results cannot be compared, 0 otherwise. Where both
sides logged per-document samples, a metric is decided on the same documents (a paired test)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lm_eval_ssmsteer.report.regress import DEFAULT_DETECT, DEFAULT_FLOOR, DEFAULT_Z


def run(args: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.report.paired import DocumentsDiffer
    from lm_eval_ssmsteer.report.regress import (
        INCONCLUSIVE,
        NotComparable,
        compare,
        format_comparison,
        inconclusive_note,
        write_baseline,
    )
    from lm_eval_ssmsteer.report.results import ResultsError, load_runs

    try:
        if args.update_baseline:
            out = write_baseline(args.current, args.baseline)
            print(f"wrote baseline {out}")
            return 0
        comparison = compare(
            load_runs([args.baseline]),
            load_runs(args.current),
            z=args.z,
            floor=args.tolerance,
            detect=args.detect,
            allow_config_mismatch=args.allow_config_mismatch,
            paired=args.paired,
        )
    except (ResultsError, NotComparable, DocumentsDiffer) as exc:
        print(f"ssmsteer regress: refusing to compare: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(comparison, show_all=args.all))
    if comparison.count(INCONCLUSIVE):
        print(f"WARNING: {inconclusive_note(comparison)}", file=sys.stderr)
    if comparison.failed:
        print(f"FAIL: {len(comparison.failed)} metric(s) regressed or missing", file=sys.stderr)
        return 1
    return 0


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "regress",
        help="compare lm-eval results with a baseline; exit 1 on a regression",
        description="A metric regresses when it moves in its worse direction by more than "
        "max(TOLERANCE, Z*sqrt(se_baseline^2 + se_current^2)); where that tolerance is wider than "
        "--detect, a worse score within it is inconclusive (exit 0, with a warning). Where both sides "
        "logged samples (--log_samples; a baseline keeps them), the metric is decided on the same "
        "documents instead: it regresses when the exact McNemar (0/1 scores) or sign test rejects 'no "
        "change' at the level Z stands for (5%% for 1.96) and the mean moved the worse way by more than "
        "TOLERANCE; it is inconclusive when its 95%% paired interval still holds a drop of --detect. Exit "
        "codes: 0 no "
        "regression, 1 a metric regressed or is missing, 2 the results cannot be compared (different task "
        "versions/configs or numbers of documents, no common model, malformed files).",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        required=True,
        help="baseline file (written by --update-baseline) or an lm-eval results file",
    )
    p.add_argument("--current", nargs="+", required=True, help="results_*.json files or folders holding them")
    p.add_argument(
        "--tolerance",
        type=_non_negative,
        default=DEFAULT_FLOOR,
        help=f"absolute floor of the tolerance, in metric units (default {DEFAULT_FLOOR})",
    )
    p.add_argument(
        "--z",
        type=_non_negative,
        default=DEFAULT_Z,
        help=f"stderr multiplier of the tolerance (default {DEFAULT_Z}, a 95%% interval)",
    )
    p.add_argument(
        "--detect",
        type=_non_negative,
        default=DEFAULT_DETECT,
        metavar="DROP",
        help="the drop the check must be able to detect, in metric units (default "
        f"{DEFAULT_DETECT}): a worse score within a wider tolerance (too few documents) is reported as "
        "'inconclusive: n=N', not as within tolerance",
    )
    p.add_argument(
        "--allow-config-mismatch",
        action="store_true",
        help="compare even when task versions, configs or documents differ (warns instead)",
    )
    p.add_argument(
        "--paired",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--paired: decide every metric on the same documents, and refuse (exit 2) results without "
        "per-document samples; --no-paired: use the stderr rule throughout; default: paired where both "
        "sides have samples",
    )
    p.add_argument("--all", action="store_true", help="list unchanged metrics too")
    p.add_argument(
        "--update-baseline",
        action="store_true",
        help="write the --current results to --baseline instead of comparing",
    )
    p.set_defaults(func=run)
