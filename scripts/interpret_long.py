"""Time and peak memory of LaTIM maps and hidden attention on one long input, on CPU.

    python scripts/interpret_long.py --model ref-mamba1 --length 4096 --layers 0
    python scripts/interpret_long.py --random mamba2 --length 4096      # random weights, reference shape

Prints one JSON line per layer: seconds for the mixer internals, the LaTIM maps (l2 + ALTI) and the
hidden attention (norm), and the process's peak resident memory so far.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from lm_eval_ssmsteer.interpret.attention import hidden_attention
from lm_eval_ssmsteer.interpret.capture import capture_layers, mamba_layers
from lm_eval_ssmsteer.interpret.latim import latim_maps
from lm_eval_ssmsteer.interpret.mixer_math import mixer_internals


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
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    if args.model:
        from transformers import AutoModelForCausalLM

        from lm_eval_ssmsteer.loading import resolve_model_path

        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model)).eval()
    else:
        model = random_model(args.random).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, args.length), generator=torch.Generator().manual_seed(args.seed))
    blocks = mamba_layers(model)
    captured = capture_layers(model, ids, args.layers)
    budget = args.memory_mb * 2**20
    for layer in args.layers:
        start = time.perf_counter()
        internals = mixer_internals(blocks[layer].mixer, captured[layer].mixer_input)
        after_internals = time.perf_counter()
        maps = latim_maps(internals, memory_bytes=budget)
        rows_sum_to_one = bool(torch.allclose(maps["l2"].sum(-1), torch.ones(args.length), atol=1e-4))
        after_latim = time.perf_counter()
        hidden_attention(internals, "norm", budget)
        after_attention = time.perf_counter()
        print(json.dumps({
            "model": args.model or f"random {args.random}",
            "length": args.length,
            "layer": layer,
            "threads": torch.get_num_threads(),
            "internals_s": round(after_internals - start, 1),
            "latim_l2_alti_s": round(after_latim - after_internals, 1),
            "hidden_attention_norm_s": round(after_attention - after_latim, 1),
            "peak_rss_mb": round(peak_rss_mb()),
            "l2_rows_sum_to_one": rows_sum_to_one,
        }))


if __name__ == "__main__":
    main()
