"""Score Mamba-1 and Stable-Mamba models at 1x-16x their training length (docs/stable_mamba.md).

Scores the models of `ssmsteer study stable-train` with lm-eval's `mamba-steered` backend and writes a
mean ± std table over seeds. Long-context tasks take `max_seq_lengths` = training length × multiple;
retrieval tasks take their count knob = the largest count seen in training × multiple. Every model is
scored by the same tasks, documents and metric; nothing depends on its name. Each call is the Python
twin of

    lm_eval --model mamba-steered --model_args pretrained=RUN --tasks ssm_passkey_mc \\
        --metadata '{"max_seq_lengths":[256,512,1024,2048,4096],"num_samples":16}'

on the CPU run with the fast scan (same values as transformers' torch scan, tests/test_fastscan.py)
because there are no mamba-ssm kernels there. Writes <run>/stable_eval.json per model (a model already
scored is skipped) and <runs>/table.md.

    OMP_NUM_THREADS=1 ssmsteer study stable-eval --runs runs/stable-cpu --num-samples 16
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

LONG_CONTEXT = ("ssm_passkey_mc", "ssm_niah_single_mc")
# retrieval task -> (count knob, the largest count in TRAIN_RANGES)
RETRIEVAL = {"ssm_mqar_mc": ("num_pairs", 24), "ssm_kv_retrieval_mc": ("num_pairs", 16)}
MULTIPLES = (1, 2, 4, 8, 16)


def score_run(
    run: Path, multiples, num_samples: int, batch_size: int, retrieval: bool, device: str = "cpu"
) -> dict[str, float]:
    """'task@Nx' -> accuracy for one model folder."""
    from lm_eval_ssmsteer.lmeval.runs import evaluate

    def results(task: str, knobs: dict) -> dict:
        metadata = {**knobs, "num_samples": num_samples}
        return evaluate(str(run), [task], metadata, device=device, batch_size=batch_size)["results"][task]

    length = json.loads((run / "training.json").read_text())["train_max_length"]
    scores = {}
    for task in LONG_CONTEXT:
        lengths = [length * m for m in multiples]
        res = results(task, {"max_seq_lengths": lengths})
        for m, n in zip(multiples, lengths, strict=True):
            scores[f"{task}@{m}x"] = res[f"{n},none"]
    if retrieval:
        for task, (knob, base) in RETRIEVAL.items():
            for m in multiples:
                scores[f"{task}@{m}x"] = results(task, {knob: base * m})["acc,none"]
    return scores


def table(per_run: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per task@length, one column per architecture, mean ± std over seeds."""
    by_arch: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, scores in sorted(per_run.items()):
        arch = name.rsplit("-s", 1)[0]
        for key, value in scores.items():
            by_arch[arch][key].append(value)
    archs = sorted(by_arch)
    keys = list(next(iter(per_run.values())))
    lines = [
        "| task @ length | "
        + " | ".join(f"{a} (n={len(next(iter(by_arch[a].values())))})" for a in archs)
        + " |"
    ]
    lines.append("|---" * (len(archs) + 1) + "|")
    for key in keys:
        cells = []
        for a in archs:
            vals = by_arch[a][key]
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.3f} ± {std:.3f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=Path, required=True, help="folder of <arch>-s<seed>/ model folders")
    p.add_argument("--only", nargs="*", default=None, help="score only these run folder names")
    p.add_argument("--multiples", nargs="+", type=int, default=list(MULTIPLES))
    p.add_argument("--num-samples", type=int, default=16, help="documents per task and length")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu (runs the fast torch scan) or cuda")
    p.add_argument("--no-retrieval", action="store_true", help="long-context tasks only")


def run(a: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.files import atomic_write_text

    runs = sorted(r for r in a.runs.iterdir() if (r / "training.json").is_file())
    for folder in runs:
        path = folder / "stable_eval.json"
        if (a.only is not None and folder.name not in a.only) or path.is_file():
            continue
        scores = score_run(folder, a.multiples, a.num_samples, a.batch_size, not a.no_retrieval, a.device)
        atomic_write_text(path, json.dumps(scores, indent=1) + "\n")
        print(folder.name, json.dumps(scores), flush=True)
    per_run = {r.name: json.loads(p.read_text()) for r in runs if (p := r / "stable_eval.json").is_file()}
    if per_run:
        text = table(per_run)
        atomic_write_text(a.runs / "table.md", text)
        print(text)
    return 0
