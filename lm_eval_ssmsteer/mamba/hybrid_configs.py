"""Random-weight configs of the hybrid families (tests, the GPU matrix, training a reference hybrid): the
one place that knows each family's config keys, checked on transformers 5.17 and 5.24.

``hybrid_config(model_type, n_layers, attention=..., ...)`` gives a config whose decoder layers hold a
Mamba mixer except those in ``attention`` (attention layers; Zamba2: hybrid layers, which run the shared
transformer block before their Mamba mixer; Falcon-H1: ignored, every layer runs both side by side) and,
for Nemotron-H, those in ``mlp``. The Mamba mixers are Mamba-2 with ``heads`` heads of ``head_dim`` in
``groups`` groups (d_inner = heads · head_dim = 2 · hidden), Jamba's Mamba-1 with d_inner = 2 · hidden.
Any other config key can be passed through ``overrides``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HYBRID_TYPES = ("bamba", "granitemoehybrid", "falcon_h1", "nemotron_h", "zamba2", "jamba")


def hybrid_config(
    model_type: str,
    n_layers: int,
    attention: Sequence[int] = (1,),
    *,
    mlp: Sequence[int] = (),
    hidden: int = 32,
    vocab: int = 260,
    heads: int = 8,
    groups: int = 2,
    state: int = 8,
    chunk: int = 8,
    attention_heads: int = 4,
    **overrides: Any,
) -> Any:
    import transformers as T

    head_dim = 2 * hidden // heads
    attention, mlp = sorted(attention), sorted(mlp)
    common = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": n_layers,
        "pad_token_id": 0,
        "eos_token_id": 0,
        "bos_token_id": 0,
        "num_attention_heads": attention_heads,
        "num_key_value_heads": max(1, attention_heads // 2),
        "intermediate_size": 3 * hidden // 2,
    }
    mamba2 = {
        "mamba_n_heads": heads,
        "mamba_d_head": head_dim,
        "mamba_n_groups": groups,
        "mamba_d_state": state,
        "mamba_chunk_size": chunk,
        "mamba_expand": 2,
    }
    if mlp and model_type != "nemotron_h":
        raise ValueError(f"mlp layers exist only in nemotron_h, not {model_type}")
    if model_type == "bamba":
        return T.BambaConfig(**common, **mamba2, attn_layer_indices=attention, **overrides)
    if model_type == "granitemoehybrid":
        kinds = ["attention" if i in attention else "mamba" for i in range(n_layers)]
        return T.GraniteMoeHybridConfig(
            **common,
            **mamba2,
            layer_types=kinds,
            num_local_experts=0,
            shared_intermediate_size=common["intermediate_size"],
            **overrides,
        )
    if model_type == "falcon_h1":
        return T.FalconH1Config(**common, **mamba2, mamba_d_ssm=2 * hidden, **overrides)
    if model_type == "nemotron_h":
        pattern = "".join("*" if i in attention else "-" if i in mlp else "M" for i in range(n_layers))
        return T.NemotronHConfig(
            **common,
            hybrid_override_pattern=pattern,
            mamba_num_heads=heads,
            mamba_head_dim=head_dim,
            n_groups=groups,
            ssm_state_size=state,
            chunk_size=chunk,
            expand=2,
            **overrides,
        )
    if model_type == "zamba2":
        kinds = ["hybrid" if i in attention else "mamba" for i in range(n_layers)]
        return T.Zamba2Config(
            **common,
            layers_block_type=kinds,
            num_mem_blocks=1,
            attention_head_dim=hidden // attention_heads,
            mamba_d_state=state,
            mamba_headdim=head_dim,
            mamba_ngroups=groups,
            n_mamba_heads=heads,
            chunk_size=chunk,
            mamba_expand=2,
            **overrides,
        )
    if model_type == "jamba":  # attention every `period` layers from `offset`: the only layout Jamba has
        period = attention[1] - attention[0] if len(attention) > 1 else n_layers
        offset = attention[0]
        if attention != list(range(offset, n_layers, period)):
            raise ValueError(f"jamba's attention layers are periodic; {attention} is not")
        return T.JambaConfig(
            **common,
            attn_layer_period=period,
            attn_layer_offset=offset,
            expert_layer_period=n_layers + 1,  # no mixture-of-experts layer
            expert_layer_offset=n_layers,
            mamba_d_state=state,
            mamba_expand=2,
            mamba_dt_rank=max(1, hidden // 8),
            **overrides,
        )
    raise ValueError(f"model_type {model_type!r} is not a hybrid; allowed: {', '.join(HYBRID_TYPES)}")


def make_ssm_visible(model: Any, seed: int = 0) -> Any:
    """Re-draw the Mamba mixers' weights of a random hybrid so that its scan matters.

    transformers initialises the hybrids with std 0.02, which leaves the scan's C·B term far below the D
    skip (and below bf16's resolution): steering Δ, B or C would then change no logit, and a check that it
    does could not fail. Projections get std 1.4/√fan_in (out_proj 1.2/√fan_in), D is drawn from
    [-0.5, 0.5] and Δ's bias from [-2, 0.5]."""
    import torch

    from lm_eval_ssmsteer.mamba.arch import mamba_mixers

    g = torch.Generator().manual_seed(seed)

    def draw(p: torch.Tensor, make) -> None:
        p.copy_(make(torch.empty(p.shape, dtype=torch.float32)).to(p.dtype))

    with torch.no_grad():
        for mixer in mamba_mixers(model).values():
            for name in ("in_proj", "x_proj", "out_proj"):
                layer = getattr(mixer, name, None)
                if layer is not None:
                    gain = 1.2 if name == "out_proj" else 1.4
                    std = gain / layer.weight.shape[1] ** 0.5
                    draw(layer.weight, lambda t, std=std: t.normal_(0.0, std, generator=g))
            draw(mixer.D, lambda t: t.uniform_(-0.5, 0.5, generator=g))
            bias = mixer.dt_bias if hasattr(mixer, "dt_bias") else mixer.dt_proj.bias
            draw(bias, lambda t: t.uniform_(-2.0, 0.5, generator=g))
    return model
