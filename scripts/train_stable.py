"""Train Mamba-1 and Stable-Mamba side by side: same width and depth (parameters within 5%), same data (the
suite's TRAIN split, the same seeded mix per seed), step budget, optimiser and schedule; one folder per
(architecture, seed) under --out, each with training.json. See docs/stable_mamba.md.

    # the GPU comparison (d_model 224, 6 layers, 6000 steps, long-context prompts up to 768 characters)
    python scripts/train_stable.py --out runs/stable --seeds 0 1 2 --device cuda
    # the CPU comparison measured in docs/stable_mamba.md
    OMP_NUM_THREADS=1 python scripts/train_stable.py --out runs/stable-cpu --seeds 0 1 2 --device cpu \\
        --hidden 64 --layers 2 --steps 300 --tokens-per-batch 2048 --max-length 256 --docs 6000 --workers 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lm_eval_ssmsteer.train import TRAIN_MAX_LENGTH, train

ARCHS = ("mamba", "stable_mamba")  # model types


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    a = p.parse_args(argv)
    for seed in a.seeds:
        for arch in a.archs:
            folder = a.out / f"{arch}-s{seed}"
            if (folder / "training.json").is_file():
                print(f"{folder}: already trained", flush=True)
                continue
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
            summary = {k: info[k] for k in ("arch", "seed", "parameters", "steps_done", "final_loss")}
            print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
