"""Score the shipped reference models on every task of the suite, per setting and per length, through
lm-eval (``mamba-steered`` unsteered; Mamba-1 with ``fast_scan=True``), and print the Markdown table
that docs/tasks.md shows. ``--backend hf`` uses the stock backend instead (same scores, slower on CPU).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/score_reference.py --samples 20

Copying and retrieval tasks run at their default knobs (in the training range) and at a harder setting
(beyond it); long-context tasks at 512 (trained up to 768 characters), 1024 and 2048 tokens. Scores are
exact match (copying, retrieval), Zoology's per-query accuracy (ssm_zoology_mqar) and RULER's
string_match_all (long context).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lm_eval_ssmsteer.taskdata import TASKS

ROOT = Path(__file__).resolve().parents[1]
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
LONG_TASKS = [task for task, spec in TASKS.items() if spec.long_context]


def run(model: str, tasks: list[str], metadata: dict, batch_size: int, backend: str) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lm_eval_ssmsteer.loading import resolve_model_path

    path = resolve_model_path(model)
    model_args = {"pretrained": path, "dtype": "float32"}
    manager = TaskManager(
        include_path=str(ROOT / "tasks"), include_defaults=False, metadata={**model_args, **metadata}
    )
    model_type = json.loads((Path(path) / "config.json").read_text())["model_type"]
    if backend == "mamba-steered" and model_type in ("mamba", "falcon_mamba"):
        model_args["fast_scan"] = True
    out = simple_evaluate(
        model=backend,
        model_args=model_args,
        tasks=tasks,
        task_manager=manager,
        device="cpu",
        batch_size=batch_size,
    )
    return out["results"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from lm_eval_ssmsteer.loading import shipped_models

    shipped = [name for name in shipped_models() if name.startswith("ref-")]
    p.add_argument("--models", nargs="+", default=shipped, help=f"default: the shipped {', '.join(shipped)}")
    p.add_argument("--samples", type=int, default=20, help="documents per task and setting (per length)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backend", choices=["mamba-steered", "hf"], default="mamba-steered")
    p.add_argument("--json", type=Path, default=None, help="also write the raw scores here")
    p.add_argument("--lengths", nargs="+", type=int, default=LENGTHS, help="long-context lengths (tokens)")
    p.add_argument("--long-only", action="store_true", help="only the long-context tasks")
    a = p.parse_args()
    scores: dict[tuple[str, str], dict[str, float]] = {}
    t0 = time.time()
    for model in a.models:
        short_tasks = {} if a.long_only else SETTINGS
        for task, settings in short_tasks.items():
            for label, knobs in settings:
                res = run(model, [task], {"num_samples": a.samples, **knobs}, a.batch_size, a.backend)
                metric = "acc,none" if "acc,none" in res[task] else "exact_match,none"
                scores.setdefault((task, label), {})[model] = res[task][metric]
        long_meta = {"num_samples": a.samples, "max_seq_lengths": a.lengths}
        res = run(model, LONG_TASKS, long_meta, a.batch_size, a.backend)
        for task in LONG_TASKS:
            for length in a.lengths:
                scores.setdefault((task, f"{length} tokens"), {})[model] = res[task][f"{length},none"]
    print(f"| task | setting | {' | '.join(a.models)} |")
    print(f"|---|---|{'---|' * len(a.models)}")
    for (task, label), row in scores.items():
        print(f"| {task} | {label} | " + " | ".join(f"{row[m]:.2f}" for m in a.models) + " |")
    print(f"\n{a.samples} documents per cell; {time.time() - t0:.0f} s")
    if a.json:
        a.json.write_text(json.dumps({f"{t}|{s}": r for (t, s), r in scores.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
