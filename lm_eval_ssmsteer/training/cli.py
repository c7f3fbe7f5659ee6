"""Trains a reference model on the suite's TRAIN split, one stage per call (see training/loop.py).

    python -m lm_eval_ssmsteer.train --arch mamba --run runs/m1 --steps 20000 --time-budget 500
    python -m lm_eval_ssmsteer.train --run runs/m1 --resume --time-budget 500
    python -m lm_eval_ssmsteer.train --run runs/m1 --resume --time-budget 500 --decay-in-budget

The first call starts the run (its configuration is kept in the checkpoint); later calls resume it exactly
(optimizer state, schedule, data position). `--decay-in-budget` makes the stage the last one: the learning
rate decays over the steps that the previous stage's speed fits in the budget. The shippable model folder
is RUN/model after every stage (weights, tokenizer, training.json with every stage's record).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lm_eval_ssmsteer.training.auxiliary import AUX_RANGES
from lm_eval_ssmsteer.training.loop import TrainConfig, train
from lm_eval_ssmsteer.training.mix import TRAIN_MAX_LENGTH, TRAIN_RANGES
from lm_eval_ssmsteer.training.models import ARCHS


def _task_name(task: str) -> str:
    """A suite task's name with its ``ssm_`` prefix (``copy`` -> ``ssm_copy``); an ``aux_`` task's as is."""
    return task if task.startswith(("ssm_", "aux_")) else f"ssm_{task}"


def _weights(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        task, sep, value = item.partition("=")
        try:
            out[_task_name(task)] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise SystemExit(f"error: --weights {item!r}: expected TASK=NUMBER, e.g. copy=3")
    return out


def _ranges(items: list[str]) -> dict[str, dict[str, list[int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for item in items:
        name, _, bounds = item.partition("=")
        task, dot, knob = name.rpartition(".")
        low, colon, high = bounds.partition(":")
        if not (dot and colon and low.strip().isdigit() and high.strip().isdigit()):
            raise SystemExit(
                f"error: --ranges {item!r}: expected TASK.KNOB=LOW:HIGH, e.g. niah_multiquery.num_queries=2:4"
            )
        task = _task_name(task)
        out.setdefault(task, {})[knob] = [int(low), int(high)]
    return out


def build_parser(description: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run folder (checkpoint/, model/, log.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run from its checkpoint")
    p.add_argument("--arch", choices=ARCHS, help="model type of a new run")
    p.add_argument("--hidden", type=int, default=None, help="hidden size (default: the reference shape)")
    p.add_argument("--layers", type=int, default=None, help="layers (default: the reference shape)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (new run: 2e-3)")
    p.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    p.add_argument("--steps", type=int, default=None, help="schedule length in steps (new run: 20000)")
    p.add_argument(
        "--decay-start", type=int, default=None, help="step where the cosine decay starts (0: all)"
    )
    p.add_argument("--tokens-per-step", type=int, default=65_536, help="padded tokens per optimizer step")
    p.add_argument("--micro-batches", type=int, default=4, help="micro-batches (of mixed lengths) per step")
    p.add_argument("--curriculum-steps", type=int, default=0, help="first steps on the lower half of ranges")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", choices=[*TRAIN_RANGES, *AUX_RANGES])
    p.add_argument(
        "--weights",
        nargs="+",
        default=[],
        metavar="TASK=W",
        help="mix weights per document; an aux_ task (training/auxiliary.py) joins the mix when weighted",
    )
    p.add_argument(
        "--balance", choices=("docs", "tokens"), default="docs", help="weights are shares of docs or tokens"
    )
    p.add_argument(
        "--ranges",
        nargs="+",
        default=[],
        metavar="TASK.KNOB=LO:HI",
        help="override a task knob's training range",
    )
    p.add_argument("--docs-per-epoch", type=int, default=100_000)
    p.add_argument("--max-length", type=int, default=TRAIN_MAX_LENGTH, help="longest long-context prompt")
    p.add_argument("--eval-every", type=int, default=500, help="steps between monitor passes (0: none)")
    p.add_argument("--eval-docs", type=int, default=32, help="calibration documents per task in the monitor")
    p.add_argument("--init", type=Path, default=None, help="a new run starts from this saved model folder")
    p.add_argument(
        "--word-start-weight",
        type=float,
        default=1.0,
        help="loss weight of an answer word's first character, e.g. a value's first digit (new run)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="steps in this stage at most")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training in this stage")
    p.add_argument("--decay-in-budget", action="store_true", help="this stage decays the learning rate")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=4, help="processes generating the data")
    return p


def main(argv: list[str] | None = None, description: str = __doc__) -> int:
    a = build_parser(description).parse_args(argv)
    from lm_eval_ssmsteer.log_filters import drop_cpu_kernel_fallback

    drop_cpu_kernel_fallback()
    try:
        return _main(a, argv)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


def _main(a: argparse.Namespace, argv: list[str] | None) -> int:
    command = "python -m lm_eval_ssmsteer.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    if a.resume:
        overrides = {
            k: v
            for k, v in (("lr", a.lr), ("steps", a.steps), ("decay_start", a.decay_start))
            if v is not None
        }
        train(
            a.run,
            resume=True,
            overrides=overrides,
            max_steps=a.max_steps,
            time_budget=a.time_budget,
            decay_in_budget=a.decay_in_budget,
            device=a.device,
            workers=a.workers,
            command=command,
        )
        return 0
    if a.arch is None:
        raise SystemExit("error: --arch is needed for a new run (or --resume to continue one)")
    config = TrainConfig(
        arch=a.arch,
        hidden=a.hidden,
        layers=a.layers,
        seed=a.seed,
        lr=2e-3 if a.lr is None else a.lr,
        warmup=a.warmup,
        steps=20_000 if a.steps is None else a.steps,
        decay_start=0 if a.decay_start is None else a.decay_start,
        tokens_per_step=a.tokens_per_step,
        micro_batches=a.micro_batches,
        curriculum_steps=a.curriculum_steps,
        tasks=tuple(a.tasks or ()),
        weights=_weights(a.weights),
        balance=a.balance,
        docs_per_epoch=a.docs_per_epoch,
        max_length=a.max_length,
        eval_every=a.eval_every,
        eval_docs=a.eval_docs,
        init=str(a.init) if a.init else None,
        word_start_weight=a.word_start_weight,
        ranges=_ranges(a.ranges),
    )
    train(
        a.run,
        config,
        max_steps=a.max_steps,
        time_budget=a.time_budget,
        device=a.device,
        workers=a.workers,
        command=command,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
