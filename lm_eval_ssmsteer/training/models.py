"""The reference models' shapes: about 2.1-2.3M parameters each, the project's 99-token vocabulary."""

from __future__ import annotations

VOCAB_SIZE = 128  # the 99-token project vocabulary, rounded up

ARCHS = ("mamba", "mamba2", "stable_mamba", "bamba")  # model types (mamba.arch)
# (hidden, layers) of the reference models; Mamba-2's heads (2 * hidden / 32) must be a multiple of 8
REF_SHAPES = {"mamba": (224, 6), "stable_mamba": (224, 6), "mamba2": (256, 5), "bamba": (256, 4)}
# the reference hybrid (issue 19): Bamba, Mamba-2 mixers as ref-mamba2's, one attention layer; every
# Bamba layer also has an MLP, kept narrow (2.3M parameters, 9.3 MB in fp32)
HYBRID_ATTENTION_LAYER = 2
HYBRID_MLP_WIDTH = 256


def model_config(arch: str, hidden: int | None = None, layers: int | None = None):
    """The reference shapes (REF_SHAPES, about 2.1M parameters each) unless `hidden`/`layers` are given.
    Stable-Mamba is Mamba-1's shape with 2 Δ gates per channel (docs/stable_mamba.md)."""
    from transformers import Mamba2Config, MambaConfig

    if arch not in REF_SHAPES:
        raise ValueError(f"unknown architecture {arch!r}: one of {', '.join(ARCHS)}")
    hidden = REF_SHAPES[arch][0] if hidden is None else hidden
    layers = REF_SHAPES[arch][1] if layers is None else layers

    common = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 1,
        "tie_word_embeddings": True,
    }
    if arch == "mamba":
        return MambaConfig(state_size=16, expand=2, conv_kernel=4, **common)
    if arch == "stable_mamba":
        from lm_eval_ssmsteer.mamba.stable import StableMambaConfig

        return StableMambaConfig(state_size=16, expand=2, conv_kernel=4, num_timescales=2, **common)
    if arch in ("mamba2", "bamba"):
        heads = 2 * hidden // 32
        # causal-conv1d's CUDA kernel reads x, B, C as a view of in_proj's output and needs its row stride
        # (2 * d_inner + 2 * state + heads) to be a multiple of 8, i.e. heads a multiple of 8
        if heads % 8:
            raise ValueError(
                f"hidden={hidden}: Mamba-2 needs 2 * hidden / 32 heads to be a multiple of 8 "
                f"(got {heads}) for causal-conv1d's kernel; use a hidden size that is a multiple of 128"
            )
        if arch == "bamba":
            from lm_eval_ssmsteer.mamba.hybrid_configs import hybrid_config

            attention = [HYBRID_ATTENTION_LAYER] if layers > HYBRID_ATTENTION_LAYER else [layers - 1]
            config = hybrid_config(
                "bamba",
                layers,
                attention=attention,
                hidden=hidden,
                vocab=VOCAB_SIZE,
                heads=heads,
                groups=1,
                state=64,
                chunk=64,
                attention_heads=4,
                tie_word_embeddings=True,
            )
            config.intermediate_size = HYBRID_MLP_WIDTH
            config.pad_token_id, config.eos_token_id, config.bos_token_id = 0, 1, 1
            return config
        return Mamba2Config(
            state_size=64,
            expand=2,
            head_dim=32,
            num_heads=heads,
            n_groups=1,
            chunk_size=64,
            conv_kernel=4,
            **common,
        )
    raise ValueError(f"unknown architecture {arch!r}: one of {', '.join(ARCHS)}")


def model_class(arch: str):
    from transformers import AutoModelForCausalLM, Mamba2ForCausalLM, MambaForCausalLM

    if arch == "bamba":
        return _AutoHybrid(AutoModelForCausalLM)

    if arch == "stable_mamba":
        from lm_eval_ssmsteer.mamba.stable import StableMambaForCausalLM

        return StableMambaForCausalLM
    return {"mamba": MambaForCausalLM, "mamba2": Mamba2ForCausalLM}[arch]


class _AutoHybrid:
    """``cls(config)`` and ``cls.from_pretrained(...)`` for a hybrid, as the pure classes offer them."""

    def __init__(self, auto) -> None:
        self.auto = auto

    def __call__(self, config):
        return self.auto.from_config(config)

    def from_pretrained(self, *args, **kwargs):
        return self.auto.from_pretrained(*args, **kwargs)
