"""Which models are Mamba-family models, and their shape: one entry per transformers ``model_type``.

One vocabulary everywhere: an architecture is named by its ``model_type`` (``mamba``, ``falcon_mamba``,
``mamba2``, ``stable_mamba``); its mixer **family** (``mamba1`` or ``mamba2``) says which site rows
(``mamba.sites``) and which scan functions (``mamba.compat``) apply. A new architecture whose mixer is
Mamba-1- or Mamba-2-style is one ``register_architecture`` call (tests/test_mamba_tables.py shows it).
Pure data and config reading: no torch import.
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

    @property
    def family(self) -> str:
        return ARCHITECTURES[self.architecture].family

    def site_width(self, site: str) -> int:
        from lm_eval_ssmsteer.mamba.sites import site_row

        return site_row(site, self.family).width(self)

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


@dataclass(frozen=True)
class Architecture:
    """A supported model_type: its causal-LM class name (for messages), mixer family, and the module
    whose functions its mixers call (where the scan functions are swapped)."""

    model_type: str
    causal_lm: str
    family: str
    modeling_module: str
    shape: Callable[[str, Any], ArchInfo]


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


def unsupported(what: str) -> UnsupportedModelError:
    listed = ", ".join(f"{a.causal_lm} (model_type {mt!r})" for mt, a in ARCHITECTURES.items())
    return UnsupportedModelError(f"{what} is not a supported Mamba-family model; supported: {listed}")


def architecture(config: Any) -> Architecture:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise unsupported(f"model_type {model_type!r}")
    return ARCHITECTURES[model_type]


def describe_config(config: Any) -> ArchInfo:
    arch = architecture(config)
    return arch.shape(arch.model_type, config)


def describe_model(model: Any) -> ArchInfo:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise unsupported(f"{type(model).__name__} (model_type {model_type!r})")
    return describe_config(config)


def mamba_blocks(model: Any) -> list:
    """The decoder blocks of a supported model, in order (each has a ``.mixer``)."""
    describe_model(model)
    return list(model.base_model.layers)


def family_of_mixer(mixer: Any) -> str:
    """The family of a mixer module, by the architecture whose modeling module wrote its ``forward``."""
    import inspect

    module = inspect.unwrap(type(mixer).forward).__module__
    for arch in ARCHITECTURES.values():
        if arch.modeling_module == module:
            return arch.family
    raise unsupported(f"{type(mixer).__name__} (from {module})")
