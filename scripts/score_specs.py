"""Held-out TEST scores of steering specs on one model through `lm_eval --model mamba-steered`, with
paired per-document differences against the first spec (the same documents are scored under each
spec, so the paired standard error is the honest one for "does this spec help").

    python scripts/score_specs.py --model ref-mamba1 --specs none found.json random.json \\
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
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def per_document(path: str, spec: str | None, tasks, lengths, samples, batch_size, device) -> dict:
    """{"task|length|doc_hash": score} for every TEST document."""
    from find_table import run_lm_eval

    out = run_lm_eval(path, spec, tasks, lengths, samples, batch_size, device, log_samples=True)
    scores = {}
    for task in tasks:
        for sample in out["samples"][task]:
            length = next(str(n) for n in lengths if str(n) in sample)
            scores[f"{task}|{length}|{sample['doc_hash']}"] = float(sample[length])
    return scores


def summary(scores: dict[str, float]) -> dict:
    columns: dict[str, list[float]] = {}
    for key, value in scores.items():
        task, length, _ = key.split("|")
        columns.setdefault(f"{task.removeprefix('ssm_')}@{length}", []).append(value)
    out = {}
    for column, values in sorted(columns.items()):
        n = len(values)
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
        out[column] = (mean, math.sqrt(var / n))
    return out


def paired(base: dict[str, float], other: dict[str, float]) -> dict:
    keys = sorted(base)
    if set(keys) != set(other):
        raise SystemExit("the specs were scored on different documents")
    diffs = [other[k] - base[k] for k in keys]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1)
    return {
        "documents": n,
        "mean": mean,
        "stderr": math.sqrt(var / n),
        "better": sum(d > 0 for d in diffs),
        "worse": sum(d < 0 for d in diffs),
    }


def main(argv: list[str] | None = None) -> dict:
    from lm_eval_ssmsteer.finder.data import DEFAULT_TASKS
    from lm_eval_ssmsteer.loading import resolve_model_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ref-mamba1")
    p.add_argument("--specs", nargs="+", required=True, help="spec files; `none` for the unsteered model")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    p.add_argument("--lengths", nargs="+", type=int, default=[512, 2048])
    p.add_argument("--samples", type=int, default=100, help="TEST documents per task and length")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    for spec in a.specs:
        if spec != "none" and not Path(spec).is_file():
            raise SystemExit(f"--specs: {spec!r} is not a file; allowed: spec JSON files or `none`")

    path = resolve_model_path(a.model)
    results = {}
    for spec in a.specs:
        results[spec] = per_document(
            path, None if spec == "none" else spec, a.tasks, a.lengths, a.samples, a.batch_size, a.device
        )
        print(f"{spec}: {sum(results[spec].values()) / len(results[spec]):.4f}", flush=True)
    base = a.specs[0]
    doc = {
        "model": a.model,
        "tasks": a.tasks,
        "lengths": a.lengths,
        "samples": a.samples,
        "device": a.device,
        "specs": {
            spec: {
                "columns": {c: {"mean": m, "stderr": e} for c, (m, e) in summary(scores).items()},
                "mean": sum(scores.values()) / len(scores),
                "paired_vs_first": paired(results[base], scores),
                "documents": scores,
            }
            for spec, scores in results.items()
        },
    }
    tmp = a.out.with_name(f".{a.out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, a.out)
    columns = list(summary(results[base]))
    print(f"| spec | {' | '.join(columns)} | mean | paired vs {base} (better/worse docs) |")
    print("|---" * (len(columns) + 3) + "|")
    for spec, entry in doc["specs"].items():
        cells = " | ".join(
            f"{entry['columns'][c]['mean']:.3f} ± {entry['columns'][c]['stderr']:.3f}" for c in columns
        )
        d = entry["paired_vs_first"]
        print(
            f"| {spec} | {cells} | {entry['mean']:.3f} | {d['mean']:+.3f} ± {d['stderr']:.3f} "
            f"({d['better']}/{d['worse']}) |"
        )
    return doc


if __name__ == "__main__":
    main()
