"""Time and peak memory of LaTIM maps and hidden attention on one long input, on CPU.

    ssmsteer study long --model ref-mamba1 --length 4096 --layers 0
    ssmsteer study long --random mamba2 --length 4096      # random weights, reference shape
    ssmsteer study long --model ref-mamba1 --task ssm_passkey --length 4096 --layers 3 \
        --knockout 2 3 --no-attention                       # a real 4k document

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
from lm_eval_ssmsteer.studies import StudyArgumentError
from lm_eval_ssmsteer.studies.needle import TASKS as NEEDLE_TASKS


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
    """The process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def task_input(tokenizer, task: str, length: int, seed: int) -> tuple[torch.Tensor, list[int], int]:
    """A test document of ``task``: (ids, the needle's positions, the position predicting the answer)."""
    from lm_eval_ssmsteer.studies.needle import needle_span
    from lm_eval_ssmsteer.taskdata import generate

    (doc,) = generate(task, "test", 1, seed, length=length)
    text = doc["context"] + " " + doc["target"]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    if ids.shape[1] != len(text):
        raise StudyArgumentError("--task expects a one-token-per-character tokenizer (the project's)")
    return ids, list(needle_span(doc["context"], doc["target"])), len(doc["context"])


def model_and_input(a: argparse.Namespace):
    """(model, ids, knockout sources, knockout target position): a --task document, else random ids
    (sources: the first 64 tokens, target: the last position)."""
    from lm_eval_ssmsteer.loading import load_model

    torch.manual_seed(a.seed)
    if a.model:
        model, tokenizer = load_model(a.model, field="--model")
    else:
        model = random_model(a.random).eval()
    if a.task:
        return (model, *task_input(tokenizer, a.task, a.length, a.seed))
    generator = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, model.config.vocab_size, (1, a.length), generator=generator)
    return model, ids, list(range(64)), a.length - 1


def time_knockout(model, ids: torch.Tensor, sources: list[int], position: int, a) -> dict:
    """One knockout forward pass in --knockout's layers: seconds and the gold token's probability."""
    start = time.perf_counter()
    spec = KnockoutSpec(tuple(a.knockout), tuple(sources), (position,))
    length = ids.shape[1]
    gold = int(ids[0, position + 1]) if position + 1 < length else None
    effect = knockout_effect(model, ids, spec, gold, position)
    return {
        "model": a.model or f"random {a.random}",
        "task": a.task,
        "length": length,
        "knockout_layers": a.knockout,
        "sources": f"{sources[0]}-{sources[-1]}",
        "target_position": position,
        "threads": torch.get_num_threads(),
        "knockout_effect_s": round(time.perf_counter() - start, 1),
        "prob_base": round(effect.prob_base, 4),
        "prob_knocked": round(effect.prob_knocked, 4),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def time_layer(mixer, captured, layer: int, length: int, a) -> dict:
    """Seconds of one layer's internals, last-16 LaTIM rows, full maps and hidden attention."""
    budget = a.memory_mb * 2**20
    start = time.perf_counter()
    internals = mixer_internals(mixer, captured.mixer_input)
    after_internals = time.perf_counter()
    rows = latim_rows(internals, range(length - 16, length), memory_bytes=budget)
    record = {
        "model": a.model or f"random {a.random}",
        "task": a.task,
        "length": length,
        "layer": layer,
        "threads": torch.get_num_threads(),
        "internals_s": round(after_internals - start, 1),
        "latim_rows_last16_s": round(time.perf_counter() - after_internals, 1),
        "peak_rss_mb_after_rows": round(peak_rss_mb()),
    }
    if not a.no_full_maps:
        before = time.perf_counter()
        maps = latim_maps(internals, memory_bytes=budget)
        record["latim_l2_alti_s"] = round(time.perf_counter() - before, 1)
        record["l2_rows_sum_to_one"] = bool(torch.allclose(maps["l2"].sum(-1), torch.ones(length), atol=1e-4))
        # other row chunks sum in another order: equal up to fp32 rounding, not bit for bit
        difference = (rows["l2"] - maps["l2"][length - 16 :]).abs().max()
        record["rows_max_abs_diff_vs_full_maps"] = float(f"{float(difference):.2e}")
        del maps
    if not a.no_attention:
        before = time.perf_counter()
        hidden_attention(internals, "norm", budget)
        record["hidden_attention_norm_s"] = round(time.perf_counter() - before, 1)
    record["peak_rss_mb"] = round(peak_rss_mb())
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="shipped model name or folder")
    source.add_argument("--random", choices=("mamba1", "mamba2"))
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--layers", type=int, nargs="+", default=[0])
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=NEEDLE_TASKS, help="a test document of this task, not random ids")
    parser.add_argument(
        "--knockout", type=int, nargs="+", metavar="LAYER", help="time a knockout in these layers"
    )
    parser.add_argument("--no-attention", action="store_true", help="skip the hidden attention")
    parser.add_argument("--no-full-maps", action="store_true", help="skip the full LaTIM maps")


def run(a: argparse.Namespace) -> int:
    if a.task and not a.model:
        raise StudyArgumentError("--task needs --model (its tokenizer)")
    model, ids, sources, position = model_and_input(a)
    if a.knockout:
        print(json.dumps(time_knockout(model, ids, sources, position, a)), flush=True)
    blocks = mamba_blocks(model)
    captured = capture_layers(model, ids, a.layers)
    for layer in a.layers:
        print(
            json.dumps(time_layer(blocks[layer].mixer, captured[layer], layer, ids.shape[1], a)), flush=True
        )
    return 0
