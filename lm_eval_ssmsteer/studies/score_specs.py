"""Held-out TEST scores of steering specs on one model through lm-eval, paired against the first spec.

The same documents are scored under each spec (`lm_eval --model mamba-steered`), so the paired
per-document standard error is the honest one for "does this spec help".

    ssmsteer study score-specs --model ref-mamba1 --specs none found.json random.json \\
        --samples 100 --lengths 512 2048 --device cuda --out scores.json

`none` is the unsteered model. Columns: one per task and length (the long-context tasks' RULER
string_match_all per length). Prints a Markdown table (mean ± standard error per column, the overall mean,
and the paired difference against the first spec: mean ± standard error, documents better / worse) and
writes every per-document score to --out (atomically).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lm_eval_ssmsteer.finder.data import DEFAULT_TASKS


def spec_argument(text: str) -> str:
    """A --specs value: `none` or an existing spec file."""
    if text != "none" and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file; allowed: spec JSON files or `none`")
    return text


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample variance; n − 1 at least 1)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return mean, math.sqrt(var / n)


def summary(scores: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Column ("task@length", without the ssm_ prefix) -> (mean, standard error) of per-document scores."""
    columns: dict[str, list[float]] = {}
    for key, value in scores.items():
        task, length, _ = key.split("|")
        columns.setdefault(f"{task.removeprefix('ssm_')}@{length}", []).append(value)
    return {column: mean_and_stderr(values) for column, values in sorted(columns.items())}


def paired(base: dict[str, float], other: dict[str, float]) -> dict:
    """The per-document differences other − base: mean, standard error, documents better and worse."""
    keys = sorted(base)
    if set(keys) != set(other):
        raise ValueError("the specs were scored on different documents")
    diffs = [other[k] - base[k] for k in keys]
    mean, stderr = mean_and_stderr(diffs)
    return {
        "documents": len(diffs),
        "mean": mean,
        "stderr": stderr,
        "better": sum(d > 0 for d in diffs),
        "worse": sum(d < 0 for d in diffs),
    }


def score_documents(a: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Spec -> per-document scores on the TEST split."""
    from lm_eval_ssmsteer.lmeval.runs import document_scores, evaluate
    from lm_eval_ssmsteer.loading import resolve_model_path

    path = resolve_model_path(a.model)
    metadata = {"num_samples": a.samples, "max_seq_lengths": a.lengths}
    results = {}
    for spec in a.specs:
        steer = None if spec == "none" else spec
        out = evaluate(path, a.tasks, metadata, steer, a.device, a.batch_size, log_samples=True)
        results[spec] = document_scores(out, a.tasks, a.lengths)
        print(f"{spec}: {sum(results[spec].values()) / len(results[spec]):.4f}", flush=True)
    return results


def record(a: argparse.Namespace, results: dict[str, dict[str, float]]) -> dict:
    """The --out document: settings, and per spec its columns, mean, paired difference and documents."""
    base = results[a.specs[0]]
    return {
        "model": a.model,
        "tasks": a.tasks,
        "lengths": a.lengths,
        "samples": a.samples,
        "device": a.device,
        "specs": {
            spec: {
                "columns": {c: {"mean": m, "stderr": e} for c, (m, e) in summary(scores).items()},
                "mean": sum(scores.values()) / len(scores),
                "paired_vs_first": paired(base, scores),
                "documents": scores,
            }
            for spec, scores in results.items()
        },
    }


def markdown(doc: dict) -> str:
    """The table printed at the end."""
    base = next(iter(doc["specs"]))
    columns = list(doc["specs"][base]["columns"])
    lines = [
        f"| spec | {' | '.join(columns)} | mean | paired vs {base} (better/worse docs) |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for spec, entry in doc["specs"].items():
        cells = " | ".join(
            f"{entry['columns'][c]['mean']:.3f} ± {entry['columns'][c]['stderr']:.3f}" for c in columns
        )
        d = entry["paired_vs_first"]
        lines.append(
            f"| {spec} | {cells} | {entry['mean']:.3f} | {d['mean']:+.3f} ± {d['stderr']:.3f} "
            f"({d['better']}/{d['worse']}) |"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="ref-mamba1")
    p.add_argument(
        "--specs",
        nargs="+",
        type=spec_argument,
        required=True,
        help="spec files; `none` for the unsteered model",
    )
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    p.add_argument("--lengths", nargs="+", type=int, default=[512, 2048])
    p.add_argument("--samples", type=int, default=100, help="TEST documents per task and length")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)


def run(a: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.files import atomic_write_text

    doc = record(a, score_documents(a))
    atomic_write_text(a.out, json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    return 0
