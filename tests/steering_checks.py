"""Helpers shared by the steering tests of pure (tests/test_steering.py) and hybrid (tests/test_hybrids.py)
models: inputs, a relative difference, channel choice, greedy generation with logits, hook counting."""

from __future__ import annotations

import torch

from lm_eval_ssmsteer.mamba.arch import describe_model


def random_ids(b: int = 2, l: int = 11, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 250, (b, l), generator=g)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def some_channels(model, site: str, k: int = 5, seed: int = 0) -> list[int]:
    width = describe_model(model).site_width(site)
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(width, generator=g)[: min(k, width)].tolist())


def greedy(model, ids, attention_mask=None, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequences, per-step logits (b, n, vocab)) of cached greedy decoding."""
    out = model.generate(
        ids,
        attention_mask=attention_mask,
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences, torch.stack(out.logits, dim=1)


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
