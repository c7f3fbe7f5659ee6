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


# Falcon-H1's µP multipliers away from 1, so that a site on the wrong side of one shows
FALCON_H1_MULTIPLIERS = {
    "ssm_multipliers": [0.5, 1.5, 0.8, 1.2, 0.9],
    "ssm_in_multiplier": 0.7,
    "ssm_out_multiplier": 1.3,
    "attention_in_multiplier": 0.9,
    "attention_out_multiplier": 1.1,
}


def hybrid_config(arch: str):
    """A tiny random config of a hybrid family (d_model 32; Mamba-2 mixers with 8 heads of 8 in 2 groups)."""
    from lm_eval_ssmsteer.mamba.hybrid_configs import hybrid_config as config

    if arch == "nemotron_h":
        return config(arch, 4, attention=[1], mlp=[3], vocab=VOCAB)
    overrides = FALCON_H1_MULTIPLIERS if arch == "falcon_h1" else {}
    return config(arch, 3, attention=[1], vocab=VOCAB, **overrides)


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

        from lm_eval_ssmsteer.mamba.hybrid_configs import make_ssm_visible

        return make_ssm_visible(AutoModelForCausalLM.from_config(hybrid_config(arch)), seed).eval()
    else:
        raise ValueError(arch)
    # random init leaves Δ tiny; widen it so every site has a visible effect
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("dt_proj.bias", "dt_bias")):
                p.uniform_(-2.0, 0.5)
    return model.eval()


def save_tiny(folder: Path, arch: str, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_model(arch, seed).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder
