"""A steering spec resolved against one model, once: the factor each (layer, site) multiplies by.

``resolve`` checks the spec against the model's shape (layers, channel ranges, fingerprint) and expands
it into per-(layer, site) ``SitePlan``s. ``SteeringPlan`` turns those into fp32 factor vectors on the
model's device, one per positions mode (``all``, ``prompt``, ``generated``; interventions compose
multiplicatively). ``steering.apply`` installs a plan and applies its factors for every forward; the
scale goes from the spec to the tensor here, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lm_eval_ssmsteer.mamba.arch import ARCHITECTURES, FINGERPRINT_KEYS, ArchInfo, describe_model
from lm_eval_ssmsteer.mamba.sites import BLOCK_OUTPUT, site_row
from lm_eval_ssmsteer.spec import Intervention, SpecError, SteeringSpec, load_spec


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
    refused = dict(arch.refused_sites)
    for i, iv in enumerate(spec.interventions):
        where = f"interventions[{i}]"
        layers = arch.steerable_layers if iv.layers == "all" else iv.layers
        # a hybrid's attention or MLP layer has a block output (`residual`) and no Mamba site
        on_block = site_row(iv.site, arch.family, arch.architecture).reach == BLOCK_OUTPUT
        for layer in layers:
            if layer > last_layer:
                raise SpecError(
                    f"{where}.layer: layer {layer} does not exist: the model has {arch.n_layers} layers "
                    f"(0-{last_layer})"
                )
            if layer not in arch.steerable_layers and not on_block:
                model = ARCHITECTURES[arch.architecture].causal_lm
                raise SpecError(
                    f"{where}.layer: layer {layer} of {model} has no Mamba mixer (an attention or MLP "
                    f"layer, where only site 'residual' can be steered); its Mamba layers are "
                    f"{', '.join(map(str, arch.steerable_layers))}"
                )
        if iv.site in refused:
            raise SpecError(f"{where}.site: site {iv.site!r} cannot be steered here: {refused[iv.site]}")
        width = site_row(iv.site, arch.family, arch.architecture).width(arch)
        if iv.channels != "all":
            for c in iv.channels:
                if c >= width:
                    model = ARCHITECTURES[arch.architecture].causal_lm
                    raise SpecError(
                        f"{where}.channels: channel {c} is out of range for site {iv.site!r} on {model}: "
                        f"it has {width} channels (0-{width - 1})"
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


# factors of one (layer, site): positions mode -> fp32 (width,) vector, or (batch, 1, width) for
# per-sequence factors given to steer_factors
SiteFactors = dict[str, torch.Tensor]


@dataclass
class SteeringPlan:
    """What to multiply, for one model: layer -> site -> positions mode -> factor."""

    arch: ArchInfo
    factors: dict[int, dict[str, SiteFactors]]
    spec: SteeringSpec | None = None
    _ranges: dict[int, tuple[float, float] | None] = field(default_factory=dict, repr=False, compare=False)

    def factor_range(self, factors: SiteFactors) -> tuple[float, float] | None:
        """The smallest and largest factor of one (layer, site) of this plan, 1 included (pads and the
        other phase are left at 1); None when a factor requires grad. Read from the device once per plan
        (plans are built once per model and spec), not on every steered call."""
        key = id(factors)
        if key not in self._ranges:
            values = list(factors.values())
            if any(v.requires_grad for v in values):
                self._ranges[key] = None
            else:
                lows, highs = torch.stack([torch.stack([v.min(), v.max()]) for v in values]).T.tolist()
                self._ranges[key] = (min(1.0, *lows), max(1.0, *highs))
        return self._ranges[key]

    @classmethod
    def build(cls, model: torch.nn.Module, spec: SteeringSpec | str | dict) -> SteeringPlan:
        spec = load_spec(spec)
        arch = describe_model(model)
        device = next(model.parameters()).device
        factors: dict[int, dict[str, SiteFactors]] = {}
        for plan in resolve(spec, arch):
            by_positions = factors.setdefault(plan.layer, {}).setdefault(plan.site, {})
            vec = by_positions.get(plan.positions)
            if vec is None:
                vec = by_positions[plan.positions] = torch.ones(arch.site_width(plan.site), device=device)
            if plan.channels is None:
                vec.mul_(plan.scale)
            else:
                idx = torch.tensor(plan.channels, device=device)
                vec[idx] = vec[idx] * plan.scale
        return cls(arch, factors, spec)

    @classmethod
    def from_factors(
        cls, model: torch.nn.Module, factors: dict[tuple[int, str], torch.Tensor]
    ) -> SteeringPlan:
        """Given factor tensors (used as given, so they may require grad) at every position: (width,) or
        (batch, 1, width)."""
        if not factors:
            raise ValueError("steer_factors needs at least one (layer, site) factor")
        arch = describe_model(model)
        spec = SteeringSpec(tuple(_identity(layer, site) for layer, site in factors))
        resolve(spec, arch)  # checks every layer and site against the model
        plan: dict[int, dict[str, SiteFactors]] = {}
        for (layer, site), factor in factors.items():
            width = arch.site_width(site)
            shape = tuple(factor.shape)
            if shape != (width,) and not (len(shape) == 3 and shape[1:] == (1, width)):
                raise ValueError(
                    f"factor for layer {layer}, site {site!r} has shape {shape}; the site has {width} "
                    f"channels, so the shape must be ({width},) or (batch, 1, {width})"
                )
            plan.setdefault(layer, {})[site] = {"all": factor}
        return cls(arch, plan)


def _identity(layer: int, site: str) -> Intervention:
    return Intervention((layer,), site, "all", 1.0)
