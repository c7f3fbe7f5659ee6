"""Which models are Mamba-family models, and their shape: one entry per transformers ``model_type``.

One vocabulary everywhere: an architecture is named by its ``model_type`` (``mamba``, ``falcon_mamba``,
``mamba2``, ``stable_mamba``, and the hybrids ``bamba``, ``granitemoehybrid``, ``falcon_h1``,
``nemotron_h``, ``zamba2``, ``jamba``); its mixer **family** (``mamba1`` or ``mamba2``) says which site
rows (``mamba.sites``) and which scan functions (``mamba.compat``) apply. A new architecture whose mixer is
Mamba-1- or Mamba-2-style is one ``register_architecture`` call (tests/test_mamba_tables.py shows it).

A layer is ``model.base_model.layers[i]``, whatever it holds. In a pure Mamba model every layer's
``.mixer`` is a Mamba mixer. In a hybrid only some layers hold one, found by the architecture's
``mixer_class`` at one of its ``mixer_paths``; the others are attention or MLP layers, and Zamba2's
hybrid layers and every Falcon-H1 layer hold a Mamba mixer and attention side by side. A hybrid's shape
(d_inner, d_state, heads, groups) is read from its first Mamba mixer, so that a config key renamed by a
transformers release changes nothing here. Config reading needs no torch; models are read as given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAMBA1, MAMBA2 = "mamba1", "mamba2"
FAMILIES = (MAMBA1, MAMBA2)
FINGERPRINT_KEYS = ("architecture", "n_layers", "d_model", "d_inner", "d_state", "n_heads", "n_groups")


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class ArchInfo:
    """The shape of one model: what site widths and spec fingerprints are computed from."""

    architecture: str  # a registered model_type
    n_layers: int
    d_model: int
    d_inner: int
    d_state: int
    n_heads: int | None = None  # Mamba-2 only
    n_groups: int | None = None  # Mamba-2 only
    mamba_layers: tuple[int, ...] | None = None  # hybrids: the layers that hold a Mamba mixer
    refused_sites: tuple[tuple[str, str], ...] = ()  # (site, why) this model's mixers cannot reach

    @property
    def steerable_layers(self) -> tuple[int, ...]:
        """The layers a spec may address: every layer of a pure Mamba model, the Mamba layers of a hybrid."""
        return tuple(range(self.n_layers)) if self.mamba_layers is None else self.mamba_layers

    @property
    def family(self) -> str:
        return ARCHITECTURES[self.architecture].family

    def site_width(self, site: str) -> int:
        from lm_eval_ssmsteer.mamba.sites import site_row

        return site_row(site, self.family, self.architecture).width(self)

    def fingerprint(self) -> dict[str, Any]:
        fp = {k: getattr(self, k) for k in FINGERPRINT_KEYS}
        return {k: v for k, v in fp.items() if v is not None}


def _mamba1_shape(model_type: str, config: Any) -> ArchInfo:
    return ArchInfo(
        architecture=model_type,
        n_layers=config.num_hidden_layers,
        d_model=config.hidden_size,
        d_inner=config.intermediate_size,
        d_state=config.state_size,
    )


def _mamba2_shape(model_type: str, config: Any) -> ArchInfo:
    return ArchInfo(
        architecture=model_type,
        n_layers=config.num_hidden_layers,
        d_model=config.hidden_size,
        d_inner=int(config.expand * config.hidden_size),
        d_state=config.state_size,
        n_heads=config.num_heads,
        n_groups=config.n_groups,
    )


def _hybrid_shape(model_type: str, config: Any, mixer: Any) -> ArchInfo:
    """A hybrid's shape, read from one of its Mamba mixers (the attribute names every transformers Mamba
    mixer shares)."""
    return ArchInfo(
        architecture=model_type,
        n_layers=config.num_hidden_layers,
        d_model=config.hidden_size,
        d_inner=mixer.intermediate_size,
        d_state=mixer.ssm_state_size,
        n_heads=getattr(mixer, "num_heads", None),
        n_groups=getattr(mixer, "n_groups", None),
    )


def _falcon_h1_refusals(config: Any) -> tuple[tuple[str, str], ...]:
    # with mamba_rms_norm and mamba_norm_before_gate, SiLU(z) multiplies after the norm: no scan input or
    # output carries it
    if getattr(config, "mamba_rms_norm", False) and getattr(config, "mamba_norm_before_gate", False):
        return (
            (
                "gate",
                "Falcon-H1 with mamba_rms_norm=True and mamba_norm_before_gate=True multiplies SiLU(z) after "
                "its RMS norm, where no steering site reaches; steer ssm_out or mixer_out instead",
            ),
        )
    return ()


@dataclass(frozen=True)
class Architecture:
    """A supported model_type: its causal-LM class name (for messages), mixer family, and the module
    whose functions its mixers call (where the scan functions are swapped).

    Hybrids also name the class of their Mamba mixer and where it sits in a layer (attribute paths,
    tried in order); ``refusals`` says which sites a given config's mixers cannot reach, and why."""

    model_type: str
    causal_lm: str
    family: str
    modeling_module: str
    shape: Callable[[str, Any], ArchInfo] | None = None  # pure models: the shape from the config
    mixer_class: str | None = None  # hybrids only
    mixer_paths: tuple[str, ...] = ("mixer",)
    refusals: Callable[[Any], tuple[tuple[str, str], ...]] | None = None

    @property
    def is_hybrid(self) -> bool:
        return self.mixer_class is not None

    def mixer_of(self, layer: Any) -> Any:
        """The Mamba mixer a decoder layer holds, or None (an attention or MLP layer of a hybrid)."""
        for path in self.mixer_paths:
            module = layer
            for name in path.split("."):
                module = getattr(module, name, None)
            if module is not None and (self.mixer_class is None or type(module).__name__ == self.mixer_class):
                return module
        return None


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> None:
    if arch.family not in FAMILIES:
        raise ValueError(f"family={arch.family!r} is not a mixer family; allowed: {', '.join(FAMILIES)}")
    ARCHITECTURES[arch.model_type] = arch


for _arch in (
    Architecture(
        "mamba", "MambaForCausalLM", "mamba1", "transformers.models.mamba.modeling_mamba", _mamba1_shape
    ),
    Architecture(
        "falcon_mamba",
        "FalconMambaForCausalLM",
        "mamba1",
        "transformers.models.falcon_mamba.modeling_falcon_mamba",
        _mamba1_shape,
    ),
    Architecture(
        "mamba2", "Mamba2ForCausalLM", "mamba2", "transformers.models.mamba2.modeling_mamba2", _mamba2_shape
    ),
    # Mamba-1 with G Δ gates per channel (lm_eval_ssmsteer.mamba.stable): its mixer calls Mamba-1's scans
    Architecture(
        "stable_mamba",
        "StableMambaForCausalLM",
        "mamba1",
        "lm_eval_ssmsteer.mamba.stable.modeling",
        _mamba1_shape,
    ),
):
    register_architecture(_arch)

_MODELS = "transformers.models"
# The hybrids (checked on transformers 5.17 and 5.24): each modeling file has its own copy of the scan
# functions, named as in compat.SCAN_FUNCTIONS.
for _arch in (
    Architecture(
        "bamba",
        "BambaForCausalLM",
        MAMBA2,
        f"{_MODELS}.bamba.modeling_bamba",
        mixer_class="BambaMixer",
        mixer_paths=("mamba",),
    ),
    Architecture(
        "granitemoehybrid",
        "GraniteMoeHybridForCausalLM",
        MAMBA2,
        f"{_MODELS}.granitemoehybrid.modeling_granitemoehybrid",
        mixer_class="GraniteMoeHybridMambaLayer",
        mixer_paths=("mamba",),
    ),
    Architecture(
        "falcon_h1",
        "FalconH1ForCausalLM",
        MAMBA2,
        f"{_MODELS}.falcon_h1.modeling_falcon_h1",
        mixer_class="FalconH1Mixer",
        mixer_paths=("mamba",),
        refusals=_falcon_h1_refusals,
    ),
    # the attention, MLP and MoE layers' `.mixer` is another class
    Architecture(
        "nemotron_h",
        "NemotronHForCausalLM",
        MAMBA2,
        f"{_MODELS}.nemotron_h.modeling_nemotron_h",
        mixer_class="NemotronHMamba2Mixer",
        mixer_paths=("mixer",),
    ),
    # Zamba2: Mamba layers, and hybrid layers that run the shared transformer block before their own Mamba
    Architecture(
        "zamba2",
        "Zamba2ForCausalLM",
        MAMBA2,
        f"{_MODELS}.zamba2.modeling_zamba2",
        mixer_class="Zamba2MambaMixer",
        mixer_paths=("mamba", "mamba_decoder.mamba"),
    ),
    # Jamba: Mamba-1 mixers with RMS norms on Δ's low-rank input, B and C
    Architecture(
        "jamba",
        "JambaForCausalLM",
        MAMBA1,
        f"{_MODELS}.jamba.modeling_jamba",
        mixer_class="JambaMambaMixer",
        mixer_paths=("mamba",),
    ),
):
    register_architecture(_arch)


def unsupported(what: str) -> UnsupportedModelError:
    listed = ", ".join(f"{a.causal_lm} (model_type {mt!r})" for mt, a in ARCHITECTURES.items())
    return UnsupportedModelError(f"{what} is not a supported Mamba-family model; supported: {listed}")


def architecture(config: Any) -> Architecture:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise unsupported(f"model_type {model_type!r}")
    return ARCHITECTURES[model_type]


def describe_config(config: Any) -> ArchInfo:
    """The shape of a model from its config; a hybrid's is read from a weightless (meta) copy."""
    arch = architecture(config)
    if not arch.is_hybrid:
        return arch.shape(arch.model_type, config)
    return describe_model(skeleton(config))


def skeleton(config: Any) -> Any:
    """The model of a supported config with weights on the meta device (no memory, no loading): enough to
    read which layers hold what."""
    import torch
    from transformers import AutoModelForCausalLM

    architecture(config)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _architecture_of(model: Any) -> Architecture:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise unsupported(f"{type(model).__name__} (model_type {model_type!r})")
    return ARCHITECTURES[model_type]


def describe_model(model: Any) -> ArchInfo:
    arch = _architecture_of(model)
    if not arch.is_hybrid:
        return arch.shape(arch.model_type, model.config)
    mixers = mamba_mixers(model)
    if not mixers:
        raise UnsupportedModelError(f"{type(model).__name__} has no Mamba layer ({arch.mixer_class})")
    shape = _hybrid_shape(arch.model_type, model.config, next(iter(mixers.values())))
    refused = arch.refusals(model.config) if arch.refusals else ()
    return ArchInfo(**{**shape.__dict__, "mamba_layers": tuple(mixers), "refused_sites": refused})


def mamba_mixers(model: Any) -> dict[int, Any]:
    """Layer index -> Mamba mixer, for every layer of a supported model that holds one."""
    arch = _architecture_of(model)
    found = ((i, arch.mixer_of(layer)) for i, layer in enumerate(model.base_model.layers))
    return {i: mixer for i, mixer in found if mixer is not None}


def mamba_blocks(model: Any) -> list:
    """The decoder blocks of a pure Mamba model, in order (each has a ``.mixer``). For a hybrid, whose
    layers do not all hold a mixer, use ``mamba_mixers``."""
    if _architecture_of(model).is_hybrid:
        raise UnsupportedModelError(
            f"{type(model).__name__} is a hybrid: its layers do not all hold a Mamba mixer (see mamba_mixers)"
        )
    return list(model.base_model.layers)


def block_hidden(output: Any) -> Any:
    """The hidden states in a decoder layer's forward output: a hybrid's layers return (hidden states, ...),
    a pure Mamba block the tensor itself."""
    return output[0] if isinstance(output, tuple) else output


def with_block_hidden(output: Any, hidden: Any) -> Any:
    """A decoder layer's forward output with its hidden states replaced (the form ``block_hidden`` reads)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def attention_modules(layer: Any) -> list:
    """The attention modules inside one decoder layer (transformers names every attention class
    ``...Attention``; decoder-layer classes end otherwise)."""
    return [m for m in layer.modules() if type(m).__name__.endswith("Attention")]


def layer_kind(model: Any, index: int) -> str:
    """What a layer holds: ``mamba``, ``attention``, ``mamba+attention`` or ``mlp``."""
    layer = model.base_model.layers[index]
    kinds = []
    if _architecture_of(model).mixer_of(layer) is not None:
        kinds.append("mamba")
    if attention_modules(layer):
        kinds.append("attention")
    return "+".join(kinds) or "mlp"


def family_of_mixer(mixer: Any) -> str:
    """The family of a mixer module, by the architecture whose modeling module wrote its ``forward``."""
    import inspect

    module = inspect.unwrap(type(mixer).forward).__module__
    for arch in ARCHITECTURES.values():
        if arch.modeling_module == module:
            return arch.family
    raise unsupported(f"{type(mixer).__name__} (from {module})")
