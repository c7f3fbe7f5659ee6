"""Channel sizes (``finder.magnitude``, method ``outlier``'s statistic) on the path users run: every
architecture, every dtype, every site, at the real shapes (``gpu_matrix.build``: mamba-130m widths,
random weights, no download).

For each architecture × dtype, the sizes of every site of one Mamba layer (the middle one) are read
unplanted; then, for each site, a copy of the model gets a plant of 4 channels × 0.1
(``studies.damping.plant``, the survey's plant) and the sizes are read again. Where the plant scales
exactly the tensor steering multiplies (``EXACT``), the planted channels' size ratio must be 0.1 and the
other channels' 1, within the dtype's tolerance; at the other sites (Δ through its bias, the gate
through SiLU, B/C behind a norm or before Mamba-2's SiLU) the ratios are printed only. Prints one
Markdown table; exits 1 on any failure.

    python benchmarks/magnitude_gpu.py --out magnitude_gpu.json            # CUDA, 130m shapes
    python benchmarks/magnitude_gpu.py --device cpu --shape tiny --dtypes fp32
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_matrix import ARCHS, DTYPES, SHAPES, build  # noqa: E402

from lm_eval_ssmsteer.finder.magnitude import channel_rms, channel_size  # noqa: E402
from lm_eval_ssmsteer.mamba.arch import MAMBA1, describe_model, mamba_mixers  # noqa: E402
from lm_eval_ssmsteer.mamba.sites import SITES  # noqa: E402
from lm_eval_ssmsteer.studies.damping import plant  # noqa: E402

COUNT, DAMPING, SEED = 4, 0.1, 3
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 5e-3}  # relative, on a ratio of two channel sizes


def exact(family: str, architecture: str, site: str) -> bool:
    """Whether the survey's plant at ``site`` scales exactly what steering multiplies there, where the
    observer reads it. Mamba-1's ssm_out: the plant scales out_proj columns, which ``channel_size`` weighs
    in. Not exact: Δ (its bias), Mamba-1's gate (SiLU(s·z)), Mamba-2's B and C (before the conv's SiLU),
    Mamba-2's gate (z, while steering's gate scales y, which the observer reads), FalconMamba's B and C
    (planted through the scan's hooks, inside the observer's: the observer sees them unplanted)."""
    if site in ("mixer_out", "residual", "ssm_out"):
        return True
    if site in ("B", "C"):  # x_proj rows (Mamba-1) or Jamba's B/C norm weights
        return family == MAMBA1 and architecture in ("mamba", "jamba")
    return False


def sizes(model, batches, layer: int, sites: list[str]) -> dict[str, torch.Tensor]:
    arch = describe_model(model)
    rms = channel_rms(model, batches, [(layer, s) for s in sites], arch.site_width)
    return {site: v for (_, site), v in channel_size(model, rms).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="130m")
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--tokens", type=int, default=512, help="tokens per sequence (2 sequences)")
    parser.add_argument("--out", help="write every row as JSON here")
    args = parser.parse_args(argv)
    ids = torch.randint(
        3, SHAPES[args.shape]["vocab"], (2, args.tokens), generator=torch.Generator().manual_seed(0)
    )
    batches = [(ids.to(args.device), ids.to(args.device))]
    rows, failures = [], []
    print("| arch | dtype | site | exact | planted ratio (min–max) | others' largest |ratio − 1| | result |")
    print("|---|---|---|---|---|---|---|")
    for arch_name in args.archs:
        for dtype_name in args.dtypes:
            model = build(arch_name, args.shape, DTYPES[dtype_name], args.device)
            info = describe_model(model)
            layers = sorted(mamba_mixers(model))
            layer = layers[len(layers) // 2]
            sites = [s for s in SITES if info.site_width(s) > 0]
            intact = sizes(model, batches, layer, sites)
            for site in sites:
                damaged = copy.deepcopy(model)
                count = min(COUNT, max(1, info.site_width(site) // 4))
                try:
                    channels = plant(damaged, layer, site, count, DAMPING, SEED)
                except ValueError as exc:  # a site this family's plant cannot reach
                    print(f"| {arch_name} | {dtype_name} | {site} | | not planted: {exc} | | – |")
                    continue
                ratio = (sizes(damaged, batches, layer, [site])[site] / intact[site]).double()
                others = [c for c in range(ratio.numel()) if c not in channels]
                planted = ratio[channels]
                spread = float((ratio[others] - 1).abs().max()) if others else 0.0
                is_exact = exact(info.family, info.architecture, site)
                tol = TOLERANCE[dtype_name]
                finite = bool(torch.isfinite(ratio).all())
                ok = finite and (
                    not is_exact
                    or (float((planted - DAMPING).abs().max()) <= tol * DAMPING * 10 and spread <= tol)
                )
                if not ok:
                    failures.append((arch_name, dtype_name, site))
                row = {
                    "arch": arch_name,
                    "dtype": dtype_name,
                    "layer": layer,
                    "site": site,
                    "channels": channels,
                    "exact": is_exact,
                    "planted_ratio": planted.tolist(),
                    "others_max_abs_dev": spread,
                    "ok": ok,
                }
                rows.append(row)
                print(
                    f"| {arch_name} | {dtype_name} | {site} | {'yes' if is_exact else 'no'} | "
                    f"{float(planted.min()):.4f}–{float(planted.max()):.4f} | {spread:.2e} | "
                    f"{'ok' if ok else 'FAIL'} |",
                    flush=True,
                )
                del damaged
            del model
            if args.device == "cuda":
                torch.cuda.empty_cache()
    print(f"\n{len(rows)} rows, {len(failures)} failures: {failures}")
    if args.out:
        versions = {"torch": torch.__version__}
        try:
            import transformers

            versions["transformers"] = transformers.__version__
            import mamba_ssm

            versions["mamba_ssm"] = mamba_ssm.__version__
        except ImportError:
            pass
        with open(args.out, "w") as f:
            json.dump(
                {"args": vars(args), "versions": versions, "rows": rows, "failures": failures}, f, indent=1
            )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
