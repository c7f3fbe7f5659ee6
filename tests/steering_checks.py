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


def steered_generation(model, layer: int, site: str, positions: str, n_new: int, min_effect: float):
    """Greedy decoding of a fixed prompt with 6 channels of (layer, site) ×3 in ``positions``, checked to
    change the output (by more than ``min_effect`` in the logits, or the tokens). Returns the generated
    logits, the full sequence a reference re-computes (prompt and generated tokens but the last), the
    positions the reference must steer, the factor vector and the prompt length."""
    from lm_eval_ssmsteer.spec import SteeringSpec
    from lm_eval_ssmsteer.steering import steer

    prompt = random_ids(b=2, l=7, seed=3)
    channels = some_channels(model, site, k=6, seed=1)
    spec = SteeringSpec.single(layer=layer, site=site, channels=channels, scale=3.0, positions=positions)
    with steer(model, spec):
        seq, gen_logits = greedy(model, prompt, n=n_new)
    base_seq, base_logits = greedy(model, prompt, n=n_new)
    assert rel_diff(gen_logits, base_logits) > min_effect or not torch.equal(seq, base_seq)

    full = seq[:, :-1]
    t = torch.arange(full.shape[1])[None, :].expand(full.shape[0], -1)
    p = prompt.shape[1]
    where = {"all": t >= 0, "prompt": t < p, "generated": t >= p}[positions]
    vec = torch.ones(describe_model(model).site_width(site))
    vec[channels] = 3.0
    return gen_logits, full, where, vec, p
