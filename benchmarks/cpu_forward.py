"""CPU forward time of the shipped reference models under the installed transformers (one thread), with
transformers' own scan and with the project's fast scans (`fast_scan=True`, lm_eval_ssmsteer.mamba.fastscan).

transformers' torch path (no CUDA kernels) is what runs Mamba on the CPU, and it changes between releases:
run this under each transformers version to compare (`.ci/run`'s lowest leg has 5.17, its newest the
newest release). Times one full forward of a batch of random token ids (no cache), after one warm-up, the
best of --repeats, and the largest difference between the two paths' logits. Prints a Markdown table.

    OMP_NUM_THREADS=1 python benchmarks/cpu_forward.py
    OMP_NUM_THREADS=1 python benchmarks/cpu_forward.py --models ref-mamba2 --batch 8 --length 512 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch


def forward_seconds(name: str, batch: int, length: int, repeats: int) -> tuple[float, float, float]:
    """(transformers' scan, the fast scan: best forward time in seconds; largest |logit difference|)."""
    from contextlib import nullcontext

    from lm_eval_ssmsteer.loading import load_model
    from lm_eval_ssmsteer.mamba.fastscan import use_fast_scan

    model, _ = load_model(name, device="cpu")
    seeded = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (batch, length), generator=seeded)
    times, logits = [], []
    with torch.no_grad():
        for scan in (nullcontext, use_fast_scan):
            best = float("inf")
            with scan():
                model(ids[:, :16], use_cache=False)  # warm-up
                for _ in range(repeats):
                    started = time.perf_counter()
                    out = model(ids, use_cache=False).logits
                    best = min(best, time.perf_counter() - started)
            times.append(best)
            logits.append(out)
    return times[0], times[1], (logits[0] - logits[1]).abs().max().item()


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
    print(f"forward of {a.batch} x {a.length} tokens, best of {a.repeats}")
    print()
    print("| model | transformers' scan | fast_scan=True | speed-up | largest logit difference |")
    print("|---|---|---|---|---|")
    for name in a.models:
        slow, fast, diff = forward_seconds(name, a.batch, a.length, a.repeats)
        print(f"| {name} | {slow:.2f} s | {fast:.2f} s | {slow / fast:.1f}x | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
