"""Where each steering site lives in each supported architecture, and how wide it is.

| site      | Mamba-1 / FalconMamba / Stable  | Mamba-2                                  |
|-----------|---------------------------------|------------------------------------------|
| mixer_out | d_model (out_proj output)       | d_model (out_proj output)                |
| residual  | d_model (block output)          | d_model (block output)                   |
| delta     | d_inner (Δ after softplus)      | n_heads (Δ after softplus and clamp)     |
| B, C      | d_state (FalconMamba: post-norm)| n_groups × d_state                       |
| ssm_out   | d_inner (scan output y, with D) | d_inner (scan output y, with D)          |
| gate      | d_inner (SiLU(z))               | d_inner (SiLU(z) inside the gated norm)  |

Stable-Mamba's mixer calls Mamba-1's scan functions, once per Δ gate, so its sites are Mamba-1's;
``delta`` scales all G gates of a channel.

``resolve`` turns a spec plus a model into a per-(layer, site) plan, checking every index against the
model's real shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lm_eval_ssmsteer.spec import FINGERPRINT_KEYS, SITES, SpecError, SteeringSpec

SUPPORTED = {
    "mamba": "MambaForCausalLM",
    "falcon_mamba": "FalconMambaForCausalLM",
    "mamba2": "Mamba2ForCausalLM",
    "stable_mamba": "StableMambaForCausalLM",  # lm_eval_ssmsteer.stable_mamba: Mamba-1 with G Δ gates
}


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class ArchInfo:
    architecture: str  # a key of SUPPORTED
    n_layers: int
    d_model: int
    d_inner: int
    d_state: int
    n_heads: int | None = None  # Mamba-2 only
    n_groups: int | None = None  # Mamba-2 only

    @property
    def family(self) -> str:
        """The mixer family: 'mamba1' (Mamba, FalconMamba, Stable-Mamba) or 'mamba2'."""
        return "mamba2" if self.architecture == "mamba2" else "mamba1"

    def site_width(self, site: str) -> int:
        if site in ("mixer_out", "residual"):
            return self.d_model
        if site in ("ssm_out", "gate"):
            return self.d_inner
        if site == "delta":
            return self.n_heads if self.family == "mamba2" else self.d_inner
        if site in ("B", "C"):
            return self.n_groups * self.d_state if self.family == "mamba2" else self.d_state
        raise SpecError(f"site={site!r} is not a known site; allowed: {', '.join(SITES)}")

    @property
    def sites(self) -> tuple[str, ...]:
        """Every site is meaningful on all three architectures (see the table above)."""
        return SITES

    def fingerprint(self) -> dict[str, Any]:
        fp = {k: getattr(self, k) for k in FINGERPRINT_KEYS}
        return {k: v for k, v in fp.items() if v is not None}


def _unsupported(what: str) -> UnsupportedModelError:
    listed = ", ".join(f"{cls} (model_type {mt!r})" for mt, cls in SUPPORTED.items())
    return UnsupportedModelError(f"{what} is not a supported Mamba-family model; supported: {listed}")


def describe_config(config: Any) -> ArchInfo:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise _unsupported(f"model_type {model_type!r}")
    if model_type == "mamba2":
        return ArchInfo(
            architecture=model_type,
            n_layers=config.num_hidden_layers,
            d_model=config.hidden_size,
            d_inner=int(config.expand * config.hidden_size),
            d_state=config.state_size,
            n_heads=config.num_heads,
            n_groups=config.n_groups,
        )
    return ArchInfo(
        architecture=model_type,
        n_layers=config.num_hidden_layers,
        d_model=config.hidden_size,
        d_inner=config.intermediate_size,
        d_state=config.state_size,
    )


def describe_model(model: Any) -> ArchInfo:
    config = getattr(model, "config", None)
    if config is None:
        raise _unsupported(type(model).__name__)
    return describe_config(config)


def model_layers(model: Any) -> Any:
    """The list of blocks (``backbone.layers``) of a supported model."""
    describe_model(model)
    return model.base_model.layers


@dataclass(frozen=True)
class SitePlan:
    """One intervention bound to one (layer, site): channels None means all of them."""

    layer: int
    site: str
    channels: tuple[int, ...] | None
    scale: float
    positions: str


def resolve(spec: SteeringSpec, arch: ArchInfo) -> list[SitePlan]:
    """Check the spec against the model's shape and expand it into per-(layer, site) plans."""
    _check_fingerprint(spec, arch)
    plans = []
    last_layer = arch.n_layers - 1
    for i, iv in enumerate(spec.interventions):
        where = f"interventions[{i}]"
        layers = range(arch.n_layers) if iv.layers == "all" else iv.layers
        for layer in layers:
            if layer > last_layer:
                raise SpecError(
                    f"{where}.layer: layer {layer} does not exist: the model has {arch.n_layers} layers "
                    f"(0-{last_layer})"
                )
        width = arch.site_width(iv.site)
        if iv.channels != "all":
            for c in iv.channels:
                if c >= width:
                    raise SpecError(
                        f"{where}.channels: channel {c} is out of range for site {iv.site!r} on "
                        f"{SUPPORTED[arch.architecture]}: it has {width} channels (0-{width - 1})"
                    )
        channels = None if iv.channels == "all" else iv.channels
        plans.extend(SitePlan(layer, iv.site, channels, iv.scale, iv.positions) for layer in layers)
    return plans


def _check_fingerprint(spec: SteeringSpec, arch: ArchInfo) -> None:
    if not spec.model:
        return
    actual = arch.fingerprint()
    mismatched = {
        k: (v, actual.get(k)) for k, v in spec.model.items() if k in FINGERPRINT_KEYS and actual.get(k) != v
    }
    if mismatched:
        name = spec.model.get("name", "another model")
        details = "; ".join(f"{k}: spec {want!r}, model {got!r}" for k, (want, got) in mismatched.items())
        raise SpecError(f"the spec was made for {name} and does not fit this model's shape ({details})")
