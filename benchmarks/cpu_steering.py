"""CPU throughput of steering on transformers' torch path: stock `hf` vs `mamba-steered`, side by side.

Models of the reference shape (hidden 160, 6 layers, fp32, random weights) for Mamba-1 and Mamba-2,
no mamba-ssm kernels (none exist on CPU). Backends, interleaved per round so that load on the machine
hits them alike: (a) stock HFLM, (b) mamba-steered unsteered, (c) steered at mixer_out, (d) at delta,
(e) at B and C, and for Mamba-1 (f) mamba-steered unsteered with `fast_scan=True` (the hand-written scan
of lm_eval_ssmsteer.mamba.fastscan). Loglikelihood batches time `_model_call`; generation times
`_model_generate` (greedy). The median of the rounds is reported.

    OMP_NUM_THREADS=1 python benchmarks/cpu_steering.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

STEER_LAYERS = [3, 4]


def specs(width: int, family: str) -> dict[str, dict | None]:
    out: dict[str, dict | None] = {
        "hf (stock)": None,
        "unsteered": None,
        "mixer_out": {
            "version": 1,
            "interventions": [
                {
                    "layer": STEER_LAYERS,
                    "site": "mixer_out",
                    "channels": list(range(0, width, 8)),
                    "scale": 2.0,
                }
            ],
        },
        "delta": {"version": 1, "interventions": [{"layer": STEER_LAYERS, "site": "delta", "scale": 1.5}]},
        "B+C": {
            "version": 1,
            "interventions": [
                {"layer": STEER_LAYERS, "site": "B", "scale": 1.2},
                {"layer": STEER_LAYERS, "site": "C", "scale": 1.2},
            ],
        },
    }
    if family == "mamba":
        out["unsteered, fast_scan"] = None
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,2048")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per loglikelihood batch")
    parser.add_argument("--gen", default="4x256+64", help="batch x prompt + new tokens for generation")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM
    from transformers import Mamba2ForCausalLM, MambaForCausalLM

    from lm_eval_ssmsteer.lmeval.backend import MambaSteeredLM
    from lm_eval_ssmsteer.taskdata import tokenizer as project_tokenizer
    from lm_eval_ssmsteer.training.models import model_config

    tok = project_tokenizer.hf_tokenizer()
    gen_b, rest = args.gen.split("x")
    gen_p, gen_n = (int(v) for v in rest.split("+"))
    rows = []
    for arch, family, cls in (("mamba1", "mamba", MambaForCausalLM), ("mamba2", "mamba2", Mamba2ForCausalLM)):
        torch.manual_seed(0)
        config = model_config(arch, hidden=160, layers=6)
        model = cls(config).eval()
        width = config.hidden_size
        lms = {}
        for name, spec in specs(width, family).items():
            if name == "hf (stock)":
                lms[name] = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
            else:
                extra = {"fast_scan": True} if "fast_scan" in name else {}
                lms[name] = MambaSteeredLM(pretrained=model, tokenizer=tok, batch_size=1, steer=spec, **extra)
        settings = []
        for length in (int(v) for v in args.lengths.split(",")):
            batch = max(1, args.tokens // length)
            settings.append(
                ("loglikelihood", f"{batch}x{length}", batch * length, torch.randint(2, 99, (batch, length)))
            )
        settings.append(("generate", args.gen, int(gen_b) * gen_n, torch.randint(2, 99, (int(gen_b), gen_p))))
        for mode, label, n_tokens, inps in settings:
            seconds: dict[str, list[float]] = {name: [] for name in lms}
            for round_ in range(args.rounds + 1):  # round 0 warms up
                for name, lm in lms.items():
                    start = time.perf_counter()
                    with torch.no_grad():
                        if mode == "loglikelihood":
                            lm._model_call(inps)
                        else:
                            lm._model_generate(
                                inps, max_length=gen_p + gen_n, stop=[], do_sample=False, min_new_tokens=gen_n
                            )
                    if round_:
                        seconds[name].append(time.perf_counter() - start)
            for name, secs in seconds.items():
                row = {
                    "arch": arch,
                    "mode": mode,
                    "tokens": label,
                    "backend": name,
                    "tok_per_s": n_tokens / statistics.median(secs),
                    "spread": (max(secs) - min(secs)) / statistics.median(secs),
                }
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
    key = lambda r: (r["arch"], r["mode"], r["tokens"])  # noqa: E731
    base = {key(r): r["tok_per_s"] for r in rows if r["backend"] == "unsteered"}
    hf = {key(r): r["tok_per_s"] for r in rows if r["backend"] == "hf (stock)"}
    print(
        f"\nCPU {platform.processor() or platform.machine()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} thread(s)), transformers {transformers.__version__}, fp32, "
        f"random weights, hidden 160 x 6 layers, median of {args.rounds} interleaved rounds"
    )
    print("| arch | mode | tokens | backend | tok/s | vs unsteered | vs hf | spread |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['mode']} | {r['tokens']} | {r['backend']} | {r['tok_per_s']:,.0f} | "
            f"{r['tok_per_s'] / base[key(r)]:.3f} | {r['tok_per_s'] / hf[key(r)]:.3f} | {r['spread']:.2f} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"torch": torch.__version__, "transformers": transformers.__version__, "rows": rows},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
