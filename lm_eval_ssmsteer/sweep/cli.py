"""``ssmsteer sweep``: many steering specs on one model load, each evaluated through lm-eval's own
evaluator on the same tasks and documents, one lm-eval results folder (samples logged) per spec, and a
leaderboard paired with the unsteered model at the end.

The specs are a grid (``--layers 18,20,22 --sites mixer_out,delta --scales 0.5,1.5,3 [--channels FILE]``)
or spec files and presets (``--specs a.json b.json``), or both. Everything is checked before any
evaluation: the model arguments, every spec against the model's shape (read from its config), the tasks.
Run the same command again to resume: finished cells are skipped, a half-done one is finished. Under
``accelerate launch`` (or ``torchrun``) each process evaluates its share of the cells on its own GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from lm_eval_ssmsteer.spec import POSITIONS


def build(args: argparse.Namespace):
    """(settings, cells) from the command line, everything checked that needs no evaluation."""
    from lm_eval_ssmsteer.lmeval.evaluate import EvalSettings, parse_model_args
    from lm_eval_ssmsteer.lmeval.model_args import STEERING_ARGS, ModelArgsError, check_model_args
    from lm_eval_ssmsteer.loading import describe_pretrained
    from lm_eval_ssmsteer.spec import SpecError
    from lm_eval_ssmsteer.sweep.grid import (
        check_cells,
        grid_cells,
        parse_list,
        read_channels,
        spec_cells,
        sweep_cells,
    )

    model_args = parse_model_args(args.model_args)
    if "pretrained" not in model_args:
        raise ModelArgsError(f"--model_args {args.model_args!r}: names no model; give pretrained=...")
    steering = sorted(set(model_args) & set(STEERING_ARGS))
    if steering:
        raise ModelArgsError(
            f"--model_args: {', '.join(steering)}: the sweep's specs come from the grid (--layers, --sites, "
            "--scales) or --specs; leave steering out of --model_args"
        )
    check_model_args(model_args)
    grid = {"--layers": args.layers, "--sites": args.sites, "--scales": args.scales}
    given = [option for option, value in grid.items() if value is not None]
    if given and len(given) < len(grid):
        missing = ", ".join(option for option in grid if option not in given)
        raise SpecError(f"a grid needs --layers, --sites and --scales: {missing} missing")
    cells = spec_cells(args.specs or [])
    if given:
        cells = [
            *grid_cells(
                parse_list(args.layers, "--layers", int),
                parse_list(args.sites, "--sites", str),
                parse_list(args.scales, "--scales", float),
                read_channels(args.channels),
                args.positions,
            ),
            *cells,
        ]
    cells = sweep_cells(cells, unsteered=args.unsteered)
    check_cells(cells, describe_pretrained(model_args["pretrained"], field="pretrained"))
    try:
        metadata = json.loads(args.metadata) if args.metadata else {}
    except json.JSONDecodeError as exc:
        raise ModelArgsError(f"--metadata: not JSON ({exc.msg})") from None
    tasks = [task for item in args.tasks for task in item.split(",") if task]
    if not tasks:
        raise ModelArgsError("--tasks: give at least one task or group")
    settings = EvalSettings(
        model_args=model_args,
        tasks=tasks,
        device=args.device,
        batch_size=args.batch_size,
        max_batch_size=args.max_batch_size,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        include_path=args.include_path,
        metadata=metadata,
        cache_requests=args.cache_requests,
    )
    return settings, cells


def run(args: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.sweep.processes import detach, device_for, launched
    from lm_eval_ssmsteer.sweep.run import run_sweep

    try:
        settings, cells = build(args)
        process = launched()
    except (ValueError, OSError) as exc:  # SpecError, ModelArgsError, UnsupportedModelError, ModelNotFound
        print(f"ssmsteer sweep: error: {exc}", file=sys.stderr)
        return 2
    detach(process)
    settings = dataclasses.replace(settings, device=device_for(settings.device, process))
    try:
        return run_sweep(settings, cells, args.out, process)
    except ValueError as exc:  # a folder of another sweep, an unknown task: nothing was evaluated
        print(f"ssmsteer sweep: error: {exc}", file=sys.stderr)
        return 2


def _batch_size(text: str) -> int | str:
    return text if text.startswith("auto") else int(text)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="evaluate many steering specs (a grid or spec files) on one model load; resumable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model_args",
        required=True,
        help="as lm_eval's, without steering: pretrained=ref-mamba1,fast_scan=True (or a JSON object)",
    )
    p.add_argument("--tasks", nargs="+", required=True, help="tasks or groups, as lm_eval's --tasks")
    p.add_argument("--out", type=Path, required=True, help="the sweep's folder (a rerun resumes it)")
    grid = p.add_argument_group("a grid: every combination of layer, site and scale is one spec")
    grid.add_argument("--layers", metavar="L,L,...", help="e.g. 18,20,22")
    grid.add_argument("--sites", metavar="SITE,...", help="e.g. mixer_out,delta")
    grid.add_argument("--scales", metavar="S,S,...", help="e.g. 0.5,1.5,3")
    grid.add_argument(
        "--channels",
        default="all",
        metavar="FILE|all",
        help="channels of every grid spec: all (default), or a file of indices (a JSON list, a spec, or "
        "integers separated by commas or spaces)",
    )
    grid.add_argument("--positions", default="all", choices=POSITIONS, help="positions of every grid spec")
    p.add_argument("--specs", nargs="+", metavar="SPEC", help="spec files or presets, one cell each")
    p.add_argument(
        "--no-unsteered",
        dest="unsteered",
        action="store_false",
        help="leave out the unsteered model (by default it is one more cell, the leaderboard's baseline)",
    )
    lm = p.add_argument_group("evaluation, as lm_eval's options of the same names")
    lm.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: cuda if available)")
    lm.add_argument("--batch_size", type=_batch_size, default=1, help="an integer or auto (default 1)")
    lm.add_argument("--max_batch_size", type=int, default=None)
    lm.add_argument("--limit", type=float, default=None, help="documents per task (testing only)")
    lm.add_argument("--num_fewshot", type=int, default=None)
    lm.add_argument("--include_path", default=None, help="a folder of more task YAMLs")
    lm.add_argument("--metadata", default=None, help="task metadata as JSON, e.g. '{\"num_samples\": 50}'")
    lm.add_argument(
        "--cache_requests",
        action="store_true",
        help="lm-eval's request cache: build each task's requests once, for every cell and later sweeps",
    )
    p.set_defaults(func=run)
