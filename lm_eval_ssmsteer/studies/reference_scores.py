"""Score reference models on every task of the suite, per setting and per length, through lm-eval.

``mamba-steered`` unsteered (Mamba-1 with the fast CPU scan where its rule allows), or ``--backend hf``
(the stock backend: same scores, slower on CPU); prints the Markdown table README.md and docs/tasks.md
show:

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 ssmsteer study reference --samples 40

Copying and retrieval tasks run at their default knobs (in the training range) and at a harder setting
(beyond it); long-context tasks at 512 (trained up to 768 characters), 1024 and 2048 tokens by default.
Scores are exact match (copying, retrieval), Zoology's per-query accuracy (ssm_zoology_mqar) and RULER's
string_match_all (long context).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LENGTHS = [512, 1024, 2048]
SETTINGS = {  # task -> [(label, metadata)]: default (in distribution), then beyond the training range
    "ssm_copy": [("default (24)", {}), ("length=48", {"length": 48})],
    "ssm_selective_copy": [
        ("default (48/6)", {}),
        ("length=96,num_tokens=12", {"length": 96, "num_tokens": 12}),
    ],
    "ssm_mamba_selective_copy": [("length=256 (16 tokens)", {"length": 256}), ("default (4096/16)", {})],
    "ssm_phonebook": [("default (16)", {}), ("num_entries=48", {"num_entries": 48})],
    "ssm_mqar": [("default (16)", {}), ("num_pairs=48", {"num_pairs": 48})],
    "ssm_zoology_mqar": [
        ("default (8/64)", {}),
        ("num_pairs=24,length=256", {"num_pairs": 24, "length": 256}),
    ],
    "ssm_kv_retrieval": [("default (12)", {}), ("num_pairs=32", {"num_pairs": 32})],
    "ssm_induction": [("default (48)", {}), ("length=128", {"length": 128})],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lm_eval_ssmsteer.loading import shipped_models

    shipped = [name for name in shipped_models() if name.startswith("ref-")]
    p.add_argument("--models", nargs="+", default=shipped, help=f"default: the shipped {', '.join(shipped)}")
    p.add_argument("--samples", type=int, default=20, help="documents per task and setting (per length)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backend", choices=["mamba-steered", "hf"], default="mamba-steered")
    p.add_argument("--json", type=Path, default=None, help="also write the raw scores here")
    p.add_argument("--lengths", nargs="+", type=int, default=LENGTHS, help="long-context lengths (tokens)")
    p.add_argument("--long-only", action="store_true", help="only the long-context tasks")


def score_model(model: str, a: argparse.Namespace) -> dict[tuple[str, str], float]:
    """(task, setting) -> score of one model."""
    from lm_eval_ssmsteer.lmeval.runs import evaluate
    from lm_eval_ssmsteer.taskdata import TASKS

    def results(tasks: list[str], metadata: dict) -> dict:
        return evaluate(model, tasks, metadata, batch_size=a.batch_size, backend=a.backend)["results"]

    scores = {}
    for task, settings in ({} if a.long_only else SETTINGS).items():
        for label, knobs in settings:
            res = results([task], {"num_samples": a.samples, **knobs})[task]
            scores[(task, label)] = res["acc,none" if "acc,none" in res else "exact_match,none"]
    long_tasks = [task for task, spec in TASKS.items() if spec.long_context]
    res = results(long_tasks, {"num_samples": a.samples, "max_seq_lengths": a.lengths})
    for task in long_tasks:
        for length in a.lengths:
            scores[(task, f"{length} tokens")] = res[task][f"{length},none"]
    return scores


def table(scores: dict[tuple[str, str], dict[str, float]], models: list[str]) -> str:
    lines = [f"| task | setting | {' | '.join(models)} |", f"|---|---|{'---|' * len(models)}"]
    for (task, label), row in scores.items():
        lines.append(f"| {task} | {label} | " + " | ".join(f"{row[m]:.2f}" for m in models) + " |")
    return "\n".join(lines)


def run(a: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.files import atomic_write_text

    t0 = time.time()
    scores: dict[tuple[str, str], dict[str, float]] = {}
    for model in a.models:
        for key, value in score_model(model, a).items():
            scores.setdefault(key, {})[model] = value
    print(table(scores, a.models))
    print(f"\n{a.samples} documents per cell; {time.time() - t0:.0f} s")
    if a.json:
        atomic_write_text(a.json, json.dumps({f"{t}|{s}": r for (t, s), r in scores.items()}, indent=1))
    return 0
