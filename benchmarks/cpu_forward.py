"""CPU forward time of the shipped reference models under the installed transformers (one thread).

transformers' torch path (no CUDA kernels) is what runs Mamba on the CPU, and it changes between releases:
run this under each transformers version to compare (`.ci/run`'s lowest leg has 5.17, its newest the
newest release). Times one full forward of a batch of random token ids (no cache), after one warm-up, the
best of --repeats. Prints a Markdown table.

    OMP_NUM_THREADS=1 python benchmarks/cpu_forward.py
    OMP_NUM_THREADS=1 python benchmarks/cpu_forward.py --models ref-mamba2 --batch 8 --length 512 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch


def forward_seconds(name: str, batch: int, length: int, repeats: int) -> float:
    from lm_eval_ssmsteer.loading import load_model

    model, _ = load_model(name, device="cpu")
    seeded = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (batch, length), generator=seeded)
    best = float("inf")
    with torch.no_grad():
        model(ids[:, :16], use_cache=False)  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            model(ids, use_cache=False)
            best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    import transformers

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["ref-mamba1", "ref-mamba2"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    for flag, value in (("--batch", a.batch), ("--length", a.length), ("--repeats", a.repeats)):
        if value < 1:
            ap.error(f"{flag}: {value}; allowed: an integer >= 1")
    threads = torch.get_num_threads()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {threads} thread(s)")
    print()
    print(f"| model | forward of {a.batch} x {a.length} tokens, best of {a.repeats} |")
    print("|---|---|")
    for name in a.models:
        print(f"| {name} | {forward_seconds(name, a.batch, a.length, a.repeats):.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
