"""Train Mamba-1 and Stable-Mamba side by side for the fair comparison of docs/stable_mamba.md.

Same width and depth (parameters within 5%), same data (the suite's TRAIN split, the same seeded mix per
seed), step budget, optimiser and schedule; one folder per (architecture, seed) under --out, each with
training.json; a folder already trained is skipped.

    # the GPU comparison (d_model 224, 6 layers, 6000 steps, long-context prompts up to 768 characters)
    ssmsteer study stable-train --out runs/stable --seeds 0 1 2 --device cuda
    # the CPU comparison measured in docs/stable_mamba.md
    OMP_NUM_THREADS=1 ssmsteer study stable-train --out runs/stable-cpu --seeds 0 1 2 --device cpu \\
        --hidden 64 --layers 2 --steps 300 --tokens-per-batch 2048 --max-length 256 --docs 6000 --workers 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lm_eval_ssmsteer.training.legacy import TRAIN_MAX_LENGTH, train

ARCHS = ("mamba", "stable_mamba")  # model types


def train_one(arch: str, seed: int, folder: Path, a: argparse.Namespace) -> dict:
    """Train one (architecture, seed) into ``folder``; its summary (arch, seed, parameters, steps, loss)."""
    info = train(
        arch,
        folder,
        a.steps,
        a.tokens_per_batch,
        a.lr,
        seed,
        a.docs,
        a.workers,
        None,
        a.device,
        eval_docs=0,
        hidden=a.hidden,
        layers=a.layers,
        max_length=a.max_length,
    )
    return {k: info[k] for k in ("arch", "seed", "parameters", "steps_done", "final_loss")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="folder for <arch>-s<seed>/ model folders")
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--tokens-per-batch", type=int, default=32768)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--docs", type=int, default=300_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="cuda")
    p.add_argument("--hidden", type=int, default=224)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--max-length", type=int, default=TRAIN_MAX_LENGTH, help="longest long-context prompt")


def run(a: argparse.Namespace) -> int:
    for seed in a.seeds:
        for arch in a.archs:
            folder = a.out / f"{arch}-s{seed}"
            if (folder / "training.json").is_file():
                print(f"{folder}: already trained", flush=True)
                continue
            print(json.dumps(train_one(arch, seed, folder, a)), flush=True)
    return 0
