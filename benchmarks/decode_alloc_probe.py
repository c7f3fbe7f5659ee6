"""Which module makes an unsteered 16-bit decode step depend on what else the GPU holds.

``gpu_matrix.py`` found that on some hybrids the unsteered model's cached decode in bf16/fp16 changes in the
last place of a logit when other tensors are held on the device while it runs (its ``alloc`` column), by
exactly the amounts that the scale-1.0 rows differ. This probe runs the unsteered model's first decode step
twice, plainly and with tensors of other sizes held, records the output of every module, and prints the
modules in execution order whose output differs although every tensor input is the same (the ones that
make the difference), then the first module whose output differs at all.

    python benchmarks/decode_alloc_probe.py --archs zamba2 granitemoehybrid --dtypes bf16 fp16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_matrix import ALLOC_PERTURBATIONS, DTYPES, SIZES, build  # noqa: E402

from lm_eval_ssmsteer.mamba.compat import cache_keyword, output_cache  # noqa: E402


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _tensors(item)]
    if isinstance(x, dict):
        return [t for item in x.values() for t in _tensors(item)]
    if hasattr(x, "to_tuple"):  # a ModelOutput
        return _tensors(x.to_tuple())
    return []


def _cache_tensors(obj, depth: int = 0) -> list[torch.Tensor]:
    """Every tensor a cache object holds (its attributes, their lists and layers), in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth > 3:
        return []
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _cache_tensors(item, depth + 1)]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _cache_tensors(obj[k], depth + 1)]
    if hasattr(obj, "__dict__"):
        return [t for k in sorted(vars(obj)) for t in _cache_tensors(vars(obj)[k], depth + 1)]
    return []


@torch.no_grad()
def first_decode_step(
    model, prompt, held_sizes
) -> tuple[list[torch.Tensor], list[tuple[str, str, list, list]]]:
    """The cache after the prefill, and (name, class, inputs, outputs) of every module call in the first
    cached decode step, in order."""
    held = [torch.empty(n, device=prompt.device) for n in held_sizes]
    out = model(prompt, use_cache=True)
    cache = [t.clone() for t in _cache_tensors(output_cache(out))]
    nxt = out.logits[:, -1:].argmax(-1)
    calls: list[tuple[str, str, list, list]] = []
    handles = []
    for name, module in model.named_modules():

        def hook(mod, args, kwargs, output, name=name):
            calls.append(
                (
                    name,
                    type(mod).__name__,
                    [t.detach().clone() for t in _tensors(args) + _tensors(kwargs)],
                    [t.detach().clone() for t in _tensors(output)],
                )
            )

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        model(nxt, use_cache=True, **{cache_keyword(model): output_cache(out)})
    finally:
        for h in handles:
            h.remove()
    del held
    return cache, calls


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True)
    )


def probe(arch: str, dtype_name: str, shape: str, attn: str | None = None) -> dict:
    model = build(arch, shape, DTYPES[dtype_name], "cuda", attn)
    batch, _, prompt_len, _ = SIZES[shape]
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(1, model.config.vocab_size, (batch, prompt_len), generator=g).to("cuda")
    cache, plain = first_decode_step(model, prompt, ())
    _, again = first_decode_step(model, prompt, ())
    result = {
        "arch": arch,
        "dtype": dtype_name,
        "attn": model.config._attn_implementation,
        "cache tensors": len(cache),
        "run twice, decode step equal": all(_same(a[3], b[3]) for a, b in zip(plain, again, strict=True)),
    }
    for sizes in ALLOC_PERTURBATIONS:
        other_cache, other = first_decode_step(model, prompt, sizes)
        sources, first = [], None
        for (name, cls, ins, outs), (_, _, ins2, outs2) in zip(plain, other, strict=True):
            if _same(outs, outs2):
                continue
            diff = max(
                (
                    float((x.float() - y.float()).abs().max())
                    for x, y in zip(outs, outs2, strict=False)  # a differing count is a difference too
                    if x.shape == y.shape
                ),
                default=float("inf"),  # no output of the same shape: the shapes differ
            )
            first = first or f"{name} ({cls}) {diff:.3g}"
            if _same(ins, ins2):
                sources.append(f"{name} ({cls}) {diff:.3g}")
        result[f"held {sizes}"] = {
            "cache after prefill equal": _same(cache, other_cache),
            "sources": sources,
            "first differing": first,
        }
    del model
    torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["zamba2", "granitemoehybrid", "falcon_h1"])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16", "fp16"])
    parser.add_argument("--shape", default="130m")
    parser.add_argument("--attn", choices=["sdpa", "eager"], help="a hybrid's attention implementation")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device (the effect is the GPU's)")
    results = [probe(a, d, args.shape, args.attn) for a in args.archs for d in args.dtypes]
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
