"""Tiny random Mamba-family models (pure and hybrid) and a byte-level tokenizer, built offline for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedTokenizerFast,
)

ARCHITECTURES = ("mamba", "falcon_mamba", "mamba2")
# each with at least one Mamba and one attention layer; MAMBA_LAYERS says which layers hold a Mamba mixer
HYBRIDS = ("bamba", "granitemoehybrid", "falcon_h1", "nemotron_h", "zamba2", "jamba")
MAMBA_LAYERS = {
    "bamba": (0, 2),
    "granitemoehybrid": (0, 2),
    "falcon_h1": (0, 1, 2),  # Mamba and attention side by side in every layer
    "nemotron_h": (0, 2),  # pattern M*M-: Mamba, attention, Mamba, MLP
    "zamba2": (0, 1, 2),  # layer 1 is a hybrid layer: the shared transformer block, then Mamba
    "jamba": (0, 2),
}
VOCAB = 260  # 256 bytes + specials, rounded up


def hybrid_config(arch: str):
    """A tiny random config of a hybrid family (d_model 32, Mamba-2 mixers with 8 heads of 8 in 2 groups)."""
    import transformers as T

    common = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "pad_token_id": 0,
        "eos_token_id": 0,
        "bos_token_id": 0,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 48,
    }
    mamba2 = {
        "mamba_n_heads": 8,
        "mamba_d_head": 8,
        "mamba_n_groups": 2,
        "mamba_d_state": 8,
        "mamba_chunk_size": 8,
        "mamba_expand": 2,
    }
    if arch == "bamba":
        return T.BambaConfig(**common, **mamba2, num_hidden_layers=3, attn_layer_indices=[1])
    if arch == "granitemoehybrid":
        return T.GraniteMoeHybridConfig(
            **common,
            **mamba2,
            num_hidden_layers=3,
            layer_types=["mamba", "attention", "mamba"],
            num_local_experts=0,
            shared_intermediate_size=48,
        )
    if arch == "falcon_h1":  # µP multipliers away from 1, so that a site on the wrong side of one shows
        return T.FalconH1Config(
            **common,
            **mamba2,
            num_hidden_layers=3,
            mamba_d_ssm=64,
            ssm_multipliers=[0.5, 1.5, 0.8, 1.2, 0.9],
            ssm_in_multiplier=0.7,
            ssm_out_multiplier=1.3,
            attention_in_multiplier=0.9,
            attention_out_multiplier=1.1,
        )
    if arch == "nemotron_h":
        return T.NemotronHConfig(
            **common,
            num_hidden_layers=4,
            hybrid_override_pattern="M*M-",
            mamba_num_heads=8,
            mamba_head_dim=8,
            n_groups=2,
            ssm_state_size=8,
            chunk_size=8,
            expand=2,
        )
    if arch == "zamba2":
        return T.Zamba2Config(
            **common,
            num_hidden_layers=3,
            layers_block_type=["mamba", "hybrid", "mamba"],
            num_mem_blocks=1,
            attention_head_dim=8,
            mamba_d_state=8,
            mamba_headdim=8,
            mamba_ngroups=2,
            n_mamba_heads=8,
            chunk_size=8,
            mamba_expand=2,
        )
    if arch == "jamba":
        return T.JambaConfig(
            **common,
            num_hidden_layers=3,
            attn_layer_period=3,
            attn_layer_offset=1,
            expert_layer_period=10,
            expert_layer_offset=9,
            mamba_d_state=8,
            mamba_expand=2,
            mamba_dt_rank=4,
        )
    raise ValueError(arch)


def make_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|endoftext|>": 0, **{ch: i + 1 for i, ch in enumerate(sorted(alphabet))}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return fast


def make_model(arch: str, seed: int = 0, n_layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": n_layers,
        "state_size": 8,
        "pad_token_id": 0,
        "eos_token_id": 0,
        "bos_token_id": 0,
    }
    if arch == "mamba":
        model = MambaForCausalLM(MambaConfig(**common, expand=2))
    elif arch == "falcon_mamba":
        model = FalconMambaForCausalLM(FalconMambaConfig(**common, expand=2))
    elif arch == "stable_mamba":  # not in ARCHITECTURES: tests/test_stable_mamba.py covers it
        from lm_eval_ssmsteer.mamba.stable import StableMambaConfig, StableMambaForCausalLM

        model = StableMambaForCausalLM(StableMambaConfig(**common, expand=2, num_timescales=2))
    elif arch == "mamba2":
        model = Mamba2ForCausalLM(
            Mamba2Config(**common, expand=2, num_heads=8, head_dim=8, n_groups=2, chunk_size=8)
        )
    elif arch in HYBRIDS:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(hybrid_config(arch))
    else:
        raise ValueError(arch)
    # random init leaves Δ tiny; widen it so every site has a visible effect
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("dt_proj.bias", "dt_bias")):
                p.uniform_(-2.0, 0.5)
            elif arch in HYBRIDS:  # their init (std 0.02) leaves the scan's C·B term far below the D skip
                _widen_mamba(name, p)
    return model.eval()


def _widen_mamba(name: str, p: torch.nn.Parameter) -> None:
    if name.endswith(("in_proj.weight", "x_proj.weight")):
        p.normal_(0.0, 0.25)
    elif name.endswith("out_proj.weight"):
        p.normal_(0.0, 0.15)
    elif name.endswith(".D"):
        p.uniform_(-0.5, 0.5)


def save_tiny(folder: Path, arch: str, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_model(arch, seed).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder
