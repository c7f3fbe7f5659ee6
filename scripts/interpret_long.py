"""Time and peak memory of LaTIM maps and hidden attention on one long input, on CPU.

    python scripts/interpret_long.py --model ref-mamba1 --length 4096 --layers 0
    python scripts/interpret_long.py --random mamba2 --length 4096      # random weights, reference shape
    python scripts/interpret_long.py --model ref-mamba1 --task ssm_passkey --length 4096 --layers 3 \
        --knockout 2 3 --no-attention                                    # a real 4k document

Prints one JSON line per layer: seconds for the mixer internals, the LaTIM rows of the last 16 positions
(latim_rows), the full LaTIM maps (l2 + ALTI) and the hidden attention (norm), and the process's peak
resident memory so far. --task takes a test document of that task (needs --model; its tokenizer must
give one token per character, as the project's does) instead of random ids. --knockout LAYERS first
times one knockout forward pass (sources: the passkey/needle sentence with --task, else the first 64
tokens; targets: the position predicting the first answer character, else the last one) and prints the
gold token's probability with and without it.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from lm_eval_ssmsteer.interpret.attention import hidden_attention
from lm_eval_ssmsteer.interpret.capture import capture_layers
from lm_eval_ssmsteer.interpret.knockout import KnockoutSpec, knockout_effect
from lm_eval_ssmsteer.interpret.latim import latim_maps, latim_rows
from lm_eval_ssmsteer.mamba.arch import mamba_blocks
from lm_eval_ssmsteer.mamba.mixer_math import mixer_internals


def random_model(kind: str) -> torch.nn.Module:
    """Random weights in the shape of the shipped reference models (d_model 224, 6 layers)."""
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    common = {"vocab_size": 128, "hidden_size": 224, "num_hidden_layers": 6}
    if kind == "mamba1":
        return MambaForCausalLM(MambaConfig(state_size=16, expand=2, conv_kernel=4, **common))
    config = Mamba2Config(
        state_size=64, expand=2, head_dim=32, num_heads=14, n_groups=1, chunk_size=64, **common
    )
    return Mamba2ForCausalLM(config)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="shipped model name or folder")
    source.add_argument("--random", choices=("mamba1", "mamba2"))
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--layers", type=int, nargs="+", default=[0])
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--task", help="a test document of this task (e.g. ssm_passkey) instead of random ids"
    )
    parser.add_argument(
        "--knockout", type=int, nargs="+", metavar="LAYER", help="time a knockout in these layers"
    )
    parser.add_argument("--no-attention", action="store_true", help="skip the hidden attention")
    parser.add_argument("--no-full-maps", action="store_true", help="skip the full LaTIM maps")
    args = parser.parse_args()
    if args.task and not args.model:
        parser.error("--task needs --model (its tokenizer)")

    torch.manual_seed(args.seed)
    if args.model:
        from transformers import AutoModelForCausalLM

        from lm_eval_ssmsteer.loading import resolve_model_path

        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model)).eval()
    else:
        model = random_model(args.random).eval()
    vocab = model.config.vocab_size
    sources, position = list(range(64)), args.length - 1
    if args.task:
        from transformers import AutoTokenizer

        from lm_eval_ssmsteer.taskdata import generate

        (doc,) = generate(args.task, "test", 1, args.seed, length=args.length)
        text = doc["context"] + " " + doc["target"]
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        if ids.shape[1] != len(text):
            parser.error("--task expects a one-token-per-character tokenizer (the project's)")
        needles = {
            "ssm_passkey": f"The pass key is {doc['target']}. Remember it. {doc['target']} is the pass key.",
            "ssm_niah_single": f"One of the special magic numbers for {doc.get('key')} is: {doc['target']}.",
        }
        if args.task not in needles:
            parser.error(f"--task takes {' or '.join(needles)}")
        start = doc["context"].index(needles[args.task])
        sources = list(range(start, start + len(needles[args.task])))
        position = len(doc["context"])  # predicts the first answer character
    else:
        ids = torch.randint(0, vocab, (1, args.length), generator=torch.Generator().manual_seed(args.seed))
    length = ids.shape[1]
    blocks = mamba_blocks(model)
    if args.knockout:
        start = time.perf_counter()
        spec = KnockoutSpec(tuple(args.knockout), tuple(sources), (position,))
        effect = knockout_effect(
            model, ids, spec, int(ids[0, position + 1]) if position + 1 < length else None, position
        )
        print(
            json.dumps(
                {
                    "model": args.model or f"random {args.random}",
                    "task": args.task,
                    "length": length,
                    "knockout_layers": args.knockout,
                    "sources": f"{sources[0]}-{sources[-1]}",
                    "target_position": position,
                    "threads": torch.get_num_threads(),
                    "knockout_effect_s": round(time.perf_counter() - start, 1),
                    "prob_base": round(effect.prob_base, 4),
                    "prob_knocked": round(effect.prob_knocked, 4),
                    "peak_rss_mb": round(peak_rss_mb()),
                }
            ),
            flush=True,
        )
    captured = capture_layers(model, ids, args.layers)
    budget = args.memory_mb * 2**20
    for layer in args.layers:
        start = time.perf_counter()
        internals = mixer_internals(blocks[layer].mixer, captured[layer].mixer_input)
        after_internals = time.perf_counter()
        rows = latim_rows(internals, range(length - 16, length), memory_bytes=budget)
        record = {
            "model": args.model or f"random {args.random}",
            "task": args.task,
            "length": length,
            "layer": layer,
            "threads": torch.get_num_threads(),
            "internals_s": round(after_internals - start, 1),
            "latim_rows_last16_s": round(time.perf_counter() - after_internals, 1),
            "peak_rss_mb_after_rows": round(peak_rss_mb()),
        }
        if not args.no_full_maps:
            before = time.perf_counter()
            maps = latim_maps(internals, memory_bytes=budget)
            record["latim_l2_alti_s"] = round(time.perf_counter() - before, 1)
            record["l2_rows_sum_to_one"] = bool(
                torch.allclose(maps["l2"].sum(-1), torch.ones(length), atol=1e-4)
            )
            # other row chunks sum in another order: equal up to fp32 rounding, not bit for bit
            difference = (rows["l2"] - maps["l2"][length - 16 :]).abs().max()
            record["rows_max_abs_diff_vs_full_maps"] = float(f"{float(difference):.2e}")
            del maps
        if not args.no_attention:
            before = time.perf_counter()
            hidden_attention(internals, "norm", budget)
            record["hidden_attention_norm_s"] = round(time.perf_counter() - before, 1)
        record["peak_rss_mb"] = round(peak_rss_mb())
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
