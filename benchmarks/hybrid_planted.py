"""Planted bottlenecks in small trained hybrids: the finder's defaults, per family and planted layer.

Each family (Mamba, attention, Mamba; d_model 16) is trained on CPU in ~10 s on the lag-copy task of
tests/test_finder_planted.py; 8 of the 16 mixer_out channels of one Mamba layer are damped (out_proj rows
× DAMPING); `find` runs with its defaults on 32 calibration documents; the spec and 8 random channels at
the same layer and site (×5.0) are scored on 64 test documents. Prints a Markdown table (docs/hybrids.md):

    OMP_NUM_THREADS=1 python benchmarks/hybrid_planted.py [--damping 0.2] [--archs ...] [--layers 0 2]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_finder_planted import documents  # noqa: E402
from test_hybrid_finder import PLANTED, mamba_mixer, trained_hybrid  # noqa: E402

from lm_eval_ssmsteer.finder import find  # noqa: E402
from lm_eval_ssmsteer.finder.methods import evaluate  # noqa: E402
from lm_eval_ssmsteer.spec import SteeringSpec  # noqa: E402

ARCHS = ("bamba", "granitemoehybrid", "zamba2", "nemotron_h", "falcon_h1", "jamba")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--layers", nargs="+", type=int, default=[0, 2], help="Mamba layers to plant in")
    p.add_argument("--damping", type=float, default=0.2)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"damping ×{a.damping} on mixer_out channels {PLANTED} (out_proj rows); find defaults\n")
    print(
        "| family | planted layer | intact loss / acc | damped loss / acc | found | planted channels found | "
        "loss won back | random 8 channels ×5.0: loss won back | find (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    calibration = documents(32, seed=1, source="calibration")
    test = documents(64, seed=2, source="test").batches()
    for arch in a.archs:
        for layer in a.layers:
            model = trained_hybrid(arch)
            intact = evaluate(model, test)
            with torch.no_grad():
                mamba_mixer(model, layer).out_proj.weight[PLANTED] *= a.damping
            damped = evaluate(model, test)
            started = time.perf_counter()
            found = find(model, calibration, progress=False).spec
            seconds = time.perf_counter() - started
            f = found.interventions[0]
            control = SteeringSpec.single(
                layer, "mixer_out", sorted(random.Random(0).sample(range(16), 8)), 5.0
            )
            lost = damped.loss - intact.loss
            won = (damped.loss - evaluate(model, test, found).loss) / lost
            won_random = (damped.loss - evaluate(model, test, control).loss) / lost
            hits = (
                len(set(f.channels) & set(PLANTED)) if f.site == "mixer_out" and f.layers == (layer,) else 0
            )
            print(
                f"| {arch} | {layer} | {intact.loss:.4f} / {intact.accuracy:.2f} | {damped.loss:.4f} / "
                f"{damped.accuracy:.2f} | {'/'.join(map(str, f.layers))} {f.site} ×{f.scale:g}, "
                f"{len(f.channels)} ch | {hits}/8 | {won:.2f} | {won_random:.2f} | {seconds:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
