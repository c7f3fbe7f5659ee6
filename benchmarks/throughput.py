"""Throughput and peak GPU memory of lm-eval-style calls: stock `hf` vs `mamba-steered`, side by side.

Random-weight models (bf16) of the mamba-130m shape (24 x 768) and the mamba-1.4b shape (48 x 2048),
vocabulary 50,280. For each backend -- (a) stock HFLM, (b) mamba-steered unsteered, (c) steered at
mixer_out, (d) at delta, (e) at B and C -- it times `_model_call` on loglikelihood batches (tokens/s,
prompt tokens) and `_model_generate` for greedy decoding (generated tokens/s), in one process so the
ratios compare like with like. `--path torch` hides mamba-ssm and causal-conv1d so that transformers
takes its torch fallback (run it as a second process).

    python benchmarks/throughput.py --path kernel --out kernel.json
    python benchmarks/throughput.py --path torch --shapes 130m --lengths 512,2048 --out torch.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _kernels import hide_kernels, kernel_versions

SHAPES = {"130m": (768, 24), "1.4b": (2048, 48)}
VOCAB = 50280


def specs(arch_width: int) -> dict[str, dict | None]:
    channels = list(range(0, arch_width, 48))
    return {
        "hf (stock)": None,
        "unsteered": None,
        "mixer_out": {
            "version": 1,
            "interventions": [{"layer": [18, 20], "site": "mixer_out", "channels": channels, "scale": 5.0}],
        },
        "delta": {"version": 1, "interventions": [{"layer": [18, 20], "site": "delta", "scale": 1.5}]},
        "B+C": {
            "version": 1,
            "interventions": [
                {"layer": [18, 20], "site": "B", "scale": 1.2},
                {"layer": [18, 20], "site": "C", "scale": 1.2},
            ],
        },
    }


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t0", pad_token="t0")


def timed(fn, repeats: int) -> tuple[float, float]:
    import torch

    fn()  # warm-up (kernel compilation, autotuning)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, torch.cuda.max_memory_allocated() / 2**30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=("kernel", "torch"), default="kernel")
    parser.add_argument("--shapes", default="130m,1.4b")
    parser.add_argument("--lengths", default="512,2048,16384,65536")
    parser.add_argument("--gen", default="8x512+128", help="batch x prompt + new tokens for generation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.path == "torch":
        hide_kernels()

    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM
    from transformers import MambaConfig, MambaForCausalLM

    from lm_eval_ssmsteer.lmeval.backend import MambaSteeredLM

    kernels = kernel_versions()
    tok = make_tokenizer()
    rows = []
    gen_b, rest = args.gen.split("x")
    gen_p, gen_n = (int(v) for v in rest.split("+"))
    for shape in args.shapes.split(","):
        d_model, n_layers = SHAPES[shape]
        torch.manual_seed(0)
        config = MambaConfig(vocab_size=VOCAB, hidden_size=d_model, num_hidden_layers=n_layers, state_size=16)
        model = MambaForCausalLM(config).to("cuda", torch.bfloat16).eval()
        lms = {
            name: HFLM(pretrained=model, tokenizer=tok, batch_size=1)
            if name == "hf (stock)"
            else MambaSteeredLM(pretrained=model, tokenizer=tok, batch_size=1, steer=spec)
            for name, spec in specs(d_model).items()
        }
        # backends interleaved per setting, so that clock drift hits them alike
        for length in (int(v) for v in args.lengths.split(",")):
            batch = max(1, 16384 // length)
            inps = torch.randint(1, VOCAB, (batch, length), device="cuda")
            for name, lm in lms.items():
                row = {
                    "shape": shape,
                    "backend": name,
                    "mode": "loglikelihood",
                    "tokens": f"{batch}x{length}",
                }
                try:
                    seconds, peak = timed(lambda lm=lm, inps=inps: lm._model_call(inps), args.repeats)
                    row.update(tok_per_s=batch * length / seconds, peak_gib=peak)
                except torch.OutOfMemoryError:
                    row.update(tok_per_s=None, peak_gib=None, note="out of memory")
                torch.cuda.empty_cache()
                rows.append(row)
                print(row, flush=True)
        ctx = torch.randint(1, VOCAB, (int(gen_b), gen_p), device="cuda")
        # decoding is launch-bound and noisy: warm every backend, then time rounds interleaved
        gen_seconds: dict[str, list[float]] = {name: [] for name in lms}
        for round_ in range(args.repeats + 1):
            for name, lm in lms.items():
                torch.cuda.synchronize()
                start = time.perf_counter()
                lm._model_generate(
                    ctx, max_length=gen_p + gen_n, stop=[], do_sample=False, min_new_tokens=gen_n
                )
                torch.cuda.synchronize()
                if round_:
                    gen_seconds[name].append(time.perf_counter() - start)
        for name, secs in gen_seconds.items():
            row = {
                "shape": shape,
                "backend": name,
                "mode": "generate",
                "tokens": args.gen,
                "tok_per_s": int(gen_b) * gen_n / sorted(secs)[len(secs) // 2],
                "peak_gib": float("nan"),
            }
            rows.append(row)
            print(row, flush=True)
        del model, lms
        torch.cuda.empty_cache()

    base = {(r["shape"], r["mode"], r["tokens"]): r["tok_per_s"] for r in rows if r["backend"] == "unsteered"}
    hf = {(r["shape"], r["mode"], r["tokens"]): r["tok_per_s"] for r in rows if r["backend"] == "hf (stock)"}
    print(
        f"\n{torch.cuda.get_device_name()}, path={args.path}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, kernels {kernels}, bf16, random weights"
    )
    print("| shape | mode | tokens | backend | tok/s | vs unsteered | vs hf | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        key = (r["shape"], r["mode"], r["tokens"])
        if r["tok_per_s"] is None:
            print(f"| {r['shape']} | {r['mode']} | {r['tokens']} | {r['backend']} | {r.get('note')} | | | |")
            continue
        vs_base = r["tok_per_s"] / base[key] if base.get(key) else float("nan")
        vs_hf = r["tok_per_s"] / hf[key] if hf.get(key) else float("nan")
        print(
            f"| {r['shape']} | {r['mode']} | {r['tokens']} | {r['backend']} | {r['tok_per_s']:,.0f} | "
            f"{vs_base:.3f} | {vs_hf:.3f} | {r['peak_gib']:.2f} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"path": args.path, "kernels": kernels, "device": torch.cuda.get_device_name(), "rows": rows},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
