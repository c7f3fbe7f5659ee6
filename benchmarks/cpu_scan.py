"""CPU time of the Mamba-1 selective scan alone: the project's fast scan (`lm_eval_ssmsteer.mamba.fastscan`,
what `fast_scan=True`, `find` and CPU training run) against transformers' torch `mamba_selective_scan`.

Random inputs at ref-mamba1's width (448 channels, state 16) and at the 130m shape's (1,536), for several
batch sizes and lengths; per cell, after one warm-up, the best of --repeats: the forward without a graph
(evaluation), the fast scan's forward and backward (training) in each of its two forms, the blocked one and
the loop (BLOCKED_TRAINING_UP_TO chooses between them; transformers' backward through its per-position
graph takes minutes a cell, so it is not timed), and the largest difference of the outputs from
transformers'. Prints a Markdown table. To compare two versions of the project, run it with each on
PYTHONPATH (e.g. a `git worktree` of the older commit):

    OMP_NUM_THREADS=1 python benchmarks/cpu_scan.py
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/old python benchmarks/cpu_scan.py --no-reference
"""

from __future__ import annotations

import argparse
import time

import torch

# (channels, batch, length): ref-mamba1 at four batch sizes, then one sequence of the 130m shape
SHAPES = ((448, 1, 2048), (448, 4, 2048), (448, 8, 512), (448, 32, 256), (1536, 1, 2048))


def _inputs(d: int, b: int, length: int, n: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, d, length, generator=g)
    dt = torch.randn(b, d, length, generator=g) - 2.0  # softplus(-2 ± 1): Δ of 0.05-0.3, as trained models
    A = -torch.rand(d, n, generator=g) * 8 - 0.5
    B, C = (torch.randn(b, n, length, generator=g) for _ in range(2))
    D, z, bias = torch.randn(d, generator=g), torch.randn(b, d, length, generator=g), torch.zeros(d)
    return [u, dt, A, B, C, D, z, bias]


def _best(run, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def cell(
    scan, inputs: list[torch.Tensor], repeats: int, train: bool = True
) -> tuple[float, float, torch.Tensor]:
    """(forward without a graph, forward and backward (nan unless ``train``): best seconds; the outputs)."""
    u, dt, A, B, C, D, z, bias = inputs
    kw = {"D": D, "z": z, "delta_bias": bias, "delta_softplus": True}
    with torch.no_grad():
        forward = _best(lambda: scan(u, dt, A, B, C, **kw), repeats)
        y = scan(u, dt, A, B, C, **kw)
    if not train:
        return forward, float("nan"), y
    leaves = [t.clone().requires_grad_(True) for t in (u, dt, A, B, C)]
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))

    def step() -> None:
        (scan(*leaves, **kw) * weights).sum().backward()

    return forward, _best(step, max(1, repeats - 1)), y


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-reference", action="store_true", help="skip transformers' scan (slow)")
    args = ap.parse_args(argv)
    import transformers
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan

    import lm_eval_ssmsteer
    from lm_eval_ssmsteer.mamba import fastscan
    from lm_eval_ssmsteer.mamba.fastscan import selective_scan

    print(
        f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"thread(s), lm_eval_ssmsteer from {lm_eval_ssmsteer.__path__[0]}\n"
    )
    # training's two forms, each forced, where this version has both (BLOCKED_TRAINING_UP_TO)
    limit = getattr(fastscan, "BLOCKED_TRAINING_UP_TO", None)
    forms = {"forward + backward": limit} if limit is None else {"blocked": 10**9, "loop": 0}
    head = "| channels x state | batch x length | fast scan: forward |"
    head += "".join(f" training, {form} |" if limit is not None else f" {form} |" for form in forms)
    rule = "|---|---|---|" + "---|" * len(forms)
    if not args.no_reference:
        head += " transformers' scan: forward | largest output difference |"
        rule += "---|---|"
    print(head)
    print(rule)
    for d, b, length in SHAPES:
        inputs = _inputs(d, b, length)
        row, fast = f"| {d} x 16 | {b} x {length} |", None
        for value in forms.values():
            if limit is not None:
                fastscan.BLOCKED_TRAINING_UP_TO = value
            forward, train, y = cell(selective_scan, inputs, args.repeats)
            if fast is None:
                fast = forward
                row += f" {fast:.3f} s |"
            row += f" {train:.3f} s |"
        if limit is not None:
            fastscan.BLOCKED_TRAINING_UP_TO = limit
        if not args.no_reference:
            ref, _, ry = cell(mamba_selective_scan, inputs, args.repeats, train=False)
            row += f" {ref:.3f} s | {(y - ry).abs().max().item():.1e} |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
