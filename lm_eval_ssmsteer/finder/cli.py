"""``ssmsteer find``: locate a bottleneck on calibration data and write the steering spec.

Scores every (layer, site) on the calibration documents, screens and sweeps the best (channel count,
then scale), and writes the configuration that lowers the answer loss most, if it also lowers it on the
validation documents; otherwise the spec written is the identity (scale 1.0). Beside the spec:
<stem>.scores.json (every score and sweep point) and <stem>.heatmap.png. Methods: docs/finder.md.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from lm_eval_ssmsteer.finder.data import (
    DEFAULT_DOCS_PER_TASK,
    DEFAULT_LENGTH,
    DEFAULT_TASKS,
    MIN_DOCS,
    FinderError,
    docs_per_task,
)
from lm_eval_ssmsteer.finder.methods import DEFAULT_METHOD, METHODS, STEEP_ORDERS, VALIDATE_CHOICES
from lm_eval_ssmsteer.finder.search import GROW_ROUNDS, NARROW_FLOOR, NARROW_WIDTH, VALIDATE_PAIRS
from lm_eval_ssmsteer.mamba.sites import SITES


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, without the source line that Python's default format echoes."""
    print(f"warning: {message}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.finder.search import (
        REJECTED_BY_VALIDATION,
        IdentityWritten,
        ValidationUndecided,
        paired_words,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IdentityWritten)  # the summary below says it, and why
        warnings.simplefilter("ignore", ValidationUndecided)
        warnings.showwarning = _print_warning
        try:
            paths, result = run(args)
        except FinderError as exc:
            print(f"error: {exc}")
            return 2
    chosen = result.scores["chosen"]
    gain = result.spec.provenance["calibration_gain"]
    iv = result.spec.interventions[0]
    if result.rejected is not None:
        checked = result.scores["validation"]
        why = (
            f"it lowered the calibration loss but raised the validation loss ({paired_words(checked)})"
            if result.rejected == REJECTED_BY_VALIDATION
            else "it did not lower the calibration loss"
        )
        print(
            "no steering: the spec written is the identity (scale 1.0). The best configuration, layer "
            f"{chosen['layer']} {chosen['site']} {chosen['k']} channels x{chosen['scale']:g}, was rejected: "
            f"{why}"
        )
    else:
        print(
            f"layer {chosen['layer']} {chosen['site']}: {len(iv.channels)} channels x{iv.scale:g}; "
            f"calibration loss {result.base.loss:.4f} -> {result.best.loss:.4f} (gain {gain['loss']:+.4f}), "
            f"accuracy {result.base.accuracy:.3f} -> {result.best.accuracy:.3f}"
        )
        checked = result.scores["validation"]
        if checked is not None:
            verdict = "confirm it" if checked["decision"] == "better" else "cannot decide (undecided)"
            print(f"validation documents {verdict}: {paired_words(checked)}")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def run(args: argparse.Namespace):
    """Validate everything cheap first (method, sites, output, model type, data), then search."""
    from transformers import AutoConfig, AutoTokenizer

    from lm_eval_ssmsteer.finder.data import (
        VALIDATION_SEED,
        encode_pairs,
        file_pairs,
        task_pairs,
        token_counter,
        validation_pairs,
        without,
    )
    from lm_eval_ssmsteer.finder.search import (
        BLOCK_METHODS,
        check_balance,
        check_max_scale,
        check_narrow,
        check_narrow_floor,
        check_output,
        check_request,
        check_validate_choice,
        default_grow,
        default_narrow,
        default_validation,
        find,
        write_outputs,
    )
    from lm_eval_ssmsteer.loading import NATIVE_TOKENIZER, ModelNotFoundError, load_model, prepare_pretrained
    from lm_eval_ssmsteer.mamba.arch import UnsupportedModelError, describe_config, describe_model

    sites = args.sites or list(SITES)
    check_request(args.method, sites)
    for flag, value, least in (
        ("--docs-per-task", args.docs_per_task, 1),
        ("--length", args.length, 1),
        ("--candidates", args.candidates, 1),
        ("--screen", args.screen, 1),
        ("--validate-top", args.validate_top, 1),
        ("--verify", args.verify, 0),
        ("--descend", args.descend, 0),
        ("--blocks", args.blocks, 0),
        ("--grow", args.grow, 0),
        ("--validation-docs-per-task", args.validation_docs_per_task, 0),
        ("--max-channels", args.max_channels, 1),
    ):
        if value is not None and value < least:
            raise FinderError(f"{flag}: {value} is too small; allowed: an integer >= {least}")
    if args.blocks and args.method not in BLOCK_METHODS:
        raise FinderError(
            f"--blocks {args.blocks} with --method {args.method}; allowed with causal and outlier"
        )
    if args.data is None:  # enough calibration documents, before the model loads
        n_tasks = len(args.tasks or DEFAULT_TASKS)
        args.docs_per_task = docs_per_task(n_tasks, args.docs_per_task)
        if args.validation_docs_per_task:  # None: as --docs-per-task; 0: no validation
            docs_per_task(n_tasks, args.validation_docs_per_task, "--validation-docs-per-task")
    check_max_scale(args.max_scale, "--max-scale")  # before the model loads
    if args.narrow is None:
        args.narrow = default_narrow(args.method)
    if args.grow is None:
        args.grow = default_grow(args.method)
    check_narrow(args.narrow, args.method, "--narrow")
    check_balance(args.balance, args.method, "--balance")
    check_narrow_floor(args.narrow_floor, "--narrow-floor")
    args.validate_top, args.validate_choice = default_validation(
        args.method, args.validate_top, args.validate_choice
    )
    check_validate_choice(args.validate_top, args.validate_choice, flags=True)
    check_output(args.out)
    try:
        path, native = prepare_pretrained(args.model, field="--model")
        describe_config(AutoConfig.from_pretrained(path))
    except ModelNotFoundError as exc:
        raise FinderError(str(exc)) from None
    except UnsupportedModelError as exc:
        raise FinderError(f"--model {args.model!r}: {exc}") from None
    except OSError as exc:
        raise FinderError(f"--model {args.model!r}: cannot load its config ({exc})") from None
    tokenizer = AutoTokenizer.from_pretrained(NATIVE_TOKENIZER if native else path)
    if args.data is not None:
        pairs, source = file_pairs(args.data), str(args.data)
    else:
        from lm_eval_ssmsteer.taskdata import TASKS, TaskDataError

        tasks = args.tasks or list(DEFAULT_TASKS)
        try:
            pairs = task_pairs(
                tasks,
                "calibration",
                args.docs_per_task,
                length=args.length,
                count_tokens=token_counter(tokenizer),
            )
        except TaskDataError as exc:
            raise FinderError(f"--length {args.length}: {exc}") from None
        long = [t for t in tasks if t in TASKS and TASKS[t].long_context]
        at = f" ({', '.join(long)} at {args.length} tokens)" if long else ""
        source = f"calibration split: {', '.join(tasks)} x {args.docs_per_task} docs{at}"
    data = encode_pairs(tokenizer, pairs, source)
    validation = None
    if args.validation_data is not None:
        held = without(file_pairs(args.validation_data), pairs)
        validation = encode_pairs(tokenizer, held, str(args.validation_data))
    elif args.data is None and args.validation_docs_per_task != 0:
        n = args.docs_per_task if args.validation_docs_per_task is None else args.validation_docs_per_task
        held = validation_pairs(tasks, pairs, n, length=args.length, count_tokens=token_counter(tokenizer))
        validation = encode_pairs(tokenizer, held, f"{source}, seed {VALIDATION_SEED} (validation)")
    model, _ = load_model(args.model, device=args.device)
    result = find(
        model,
        data,
        sites=sites,
        method=args.method,
        candidates=args.candidates,
        screen=args.screen,
        validation=validation,
        validate_top=args.validate_top,
        validate_choice=args.validate_choice,
        steep_order=args.steep_order,
        descend=args.descend,
        blocks=args.blocks,
        max_scale=args.max_scale,
        narrow=args.narrow,
        narrow_floor=args.narrow_floor,
        grow=args.grow,
        balance=args.balance,
        verify=args.verify,
        max_channels=args.max_channels,
        model_name=args.model,
        progress=not args.no_progress,
    )
    return write_outputs(result, args.out, describe_model(model), sites), result


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "find",
        help="find a bottleneck on calibration data and write a steering spec (docs/finder.md)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="shipped model name, HF id or local folder")
    p.add_argument(
        "--out", type=Path, required=True, help="spec JSON to write (scores and heatmap beside it)"
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--tasks",
        nargs="+",
        help=f"suite tasks whose CALIBRATION split is used (default: {' '.join(DEFAULT_TASKS)})",
    )
    source.add_argument("--data", type=Path, help='JSONL file: one {"context": ..., "answer": ...} a line')
    p.add_argument(
        "--docs-per-task",
        type=int,
        default=None,
        help=f"calibration docs per task (default {DEFAULT_DOCS_PER_TASK}, or more where fewer tasks would "
        f"give under {MIN_DOCS} documents in all)",
    )
    p.add_argument(
        "--length",
        type=int,
        default=DEFAULT_LENGTH,
        help=f"prompt length in tokens of the long-context calibration tasks (default {DEFAULT_LENGTH})",
    )
    p.add_argument(
        "--validation-docs-per-task",
        type=int,
        default=None,
        help="validation documents per task (calibration split, another seed) that the chosen spec must "
        "also improve, else the identity is written (default: as --docs-per-task; 0: no validation)",
    )
    p.add_argument(
        "--validation-data",
        type=Path,
        help="JSONL file of validation documents (with --data; without it, --data runs have no validation)",
    )
    p.add_argument("--sites", nargs="+", help=f"sites to score (default: all of {' '.join(SITES)})")
    p.add_argument(
        "--method", default=DEFAULT_METHOD, help=f"one of {', '.join(METHODS)} (default: {DEFAULT_METHOD})"
    )
    p.add_argument(
        "--screen",
        type=int,
        default=3,
        help="causal and outlier: best-scored (layer, site) pairs screened by real interventions; outlier "
        "also screens as many pairs with the steepest single-channel gradient (default 3)",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=1,
        help="(layer, site) pairs swept: the best screened (causal, outlier) or best-scored ones (default 1)",
    )
    p.add_argument(
        "--verify",
        type=int,
        default=4,
        help="causal and outlier: channels per direction verified (default 4)",
    )
    p.add_argument(
        "--validate-top",
        type=int,
        default=None,
        help="the best configurations of this many (layer, site) pairs are scored on the validation "
        f"documents and one of them is chosen (--validate-choice; default {VALIDATE_PAIRS} for outlier, 1 "
        "for the others: the calibration's best; docs/finder.md, 'The next set')",
    )
    p.add_argument(
        "--validate-choice",
        choices=VALIDATE_CHOICES,
        default=None,
        help="with --validate-top N > 1: gain (the validated configuration that lowers the validation loss "
        "most) or paired (that one only when, document by document, it lowers the validation loss more "
        "than the calibration's best does; else the calibration's best stays); default paired for outlier, "
        "gain for the others",
    )
    p.add_argument(
        "--steep-order",
        choices=STEEP_ORDERS,
        default="gradient",
        help="outlier: how the channels of a pair chosen for its steepest channel are ordered before its "
        "first 1, 2, 4, 8 are screened: gradient (most negative first, default), size (smallest first) or "
        "ratio (gradient over size); docs/finder.md, 'Unseen plants'",
    )
    p.add_argument(
        "--descend",
        type=int,
        default=0,
        metavar="STEPS",
        help="after the sweep, this many Adam steps on the per-channel log-scales of the best pair (and for "
        "outlier the outlier screen's first pair), L1-pulled toward 1; the channels amplified past x1.5 "
        "compete at x2, x3, x5, x8 (default 0: off; docs/finder.md, 'Descent')",
    )
    p.add_argument(
        "--blocks",
        type=int,
        default=0,
        metavar="N",
        help="causal and outlier: also screen every pair's channels in N seeded random blocks at x8, then "
        "refine the two best pairs' gaining blocks (default 0: off; docs/finder.md, 'Block screen')",
    )
    p.add_argument(
        "--max-scale",
        type=int,
        default=8,
        metavar="S",
        help="the sweep's largest amplifying scale: past 8 it also tries x13, x20, x32, x50, x80 up to S, "
        "and S (a damping by p is undone at 1/p); a whole number from 8 to 100 (default 8; docs/finder.md, "
        "'Scales past x8')",
    )
    p.add_argument(
        "--narrow",
        type=int,
        default=None,
        metavar="W",
        help="outlier: also screen every pair of a site at most W channels wide with its smallest 1, 2, 4, "
        f"... channels (up to a quarter of the site) restored to its median channel (default {NARROW_WIDTH} "
        "for outlier; 0: off; docs/finder.md, 'Narrow screen')",
    )
    p.add_argument(
        "--narrow-floor",
        type=float,
        default=NARROW_FLOOR,
        metavar="R",
        help="the narrow screen tries a count of channels only where restoring them to the median channel "
        f"takes a scale of at least R (default {NARROW_FLOOR:g}; 0: every count)",
    )
    p.add_argument(
        "--grow",
        type=int,
        default=None,
        metavar="ROUNDS",
        help="after the sweep, up to this many rounds from its best point: a gradient there, then the 1, 2, "
        "4, 8 outside channels it asks up most added at the point's scale, the best kept while it lowers "
        f"the loss (default {GROW_ROUNDS} for outlier, 0 for the others; 0: off; docs/finder.md, 'Grow')",
    )
    p.add_argument(
        "--balance",
        action="store_true",
        help="method outlier on Mamba-2: set the ssm_out channel sizes (y) and the gate ones (read as the "
        "gated product y*SiLU(z)) against the line of size on the norm of what reads them, so a channel "
        "that arrives weak where it is read strongly is an outlier, and screen the 2 most extreme such pairs "
        "besides (default off; docs/finder.md, 'Balance')",
    )
    p.add_argument("--max-channels", type=int, default=32, help="most channels in the spec (default 32)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
