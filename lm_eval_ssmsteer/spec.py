"""The steering spec: a versioned JSON document saying which activations to multiply by which scalar.

An intervention is data, not code. The spec is validated once, at the edge (``SteeringSpec.from_dict``),
with errors that name the field, the value and what is allowed; checks that need the model's shape
happen in ``sites.resolve`` when the spec meets a model. ``to_dict`` round-trips exactly.

    {"version": 1,
     "interventions": [{"layer": 20 | [18, 20] | "all", "site": "mixer_out",
                        "channels": [4, 38] | "all", "scale": 5.0,
                        "positions": "all" | "prompt" | "generated"}],
     "model": {optional fingerprint: architecture, n_layers, d_model, ...},
     "provenance": {free-form}}
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_ssmsteer.mamba.arch import FINGERPRINT_KEYS
from lm_eval_ssmsteer.mamba.sites import site_names

SPEC_VERSION = 1
POSITIONS = ("all", "prompt", "generated")

_TOP_KEYS = {"version", "interventions", "model", "provenance"}
_INTERVENTION_KEYS = {"layer", "site", "channels", "scale", "positions"}


class SpecError(ValueError):
    """A steering spec (or its use with a model) is invalid; the message names field, value, allowed."""


@dataclass(frozen=True)
class Intervention:
    """Multiply ``channels`` of ``site`` in ``layers`` by ``scale`` at ``positions``."""

    layers: tuple[int, ...] | str  # a tuple of layer indices, or "all"
    site: str
    channels: tuple[int, ...] | str  # a tuple of channel indices, or "all"
    scale: float
    positions: str = "all"

    def to_dict(self) -> dict[str, Any]:
        layer: Any = self.layers
        if isinstance(layer, tuple):
            layer = layer[0] if len(layer) == 1 else list(layer)
        channels = self.channels if isinstance(self.channels, str) else list(self.channels)
        return {
            "layer": layer,
            "site": self.site,
            "channels": channels,
            "scale": self.scale,
            "positions": self.positions,
        }


@dataclass(frozen=True)
class SteeringSpec:
    interventions: tuple[Intervention, ...]
    model: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = SPEC_VERSION

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: Any, *, source: str = "spec") -> SteeringSpec:
        if not isinstance(doc, dict):
            raise SpecError(f"{source}: a steering spec must be a JSON object, got {type(doc).__name__}")
        unknown = set(doc) - _TOP_KEYS
        if unknown:
            raise SpecError(f"{source}: unknown key(s) {sorted(unknown)}; allowed keys: {sorted(_TOP_KEYS)}")
        version = doc.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise SpecError(f"{source}: version={version!r} is not supported; allowed: {SPEC_VERSION}")
        items = doc.get("interventions")
        if not isinstance(items, list) or not items:
            raise SpecError(f"{source}: 'interventions' must be a non-empty list, got {items!r}")
        interventions = tuple(
            _parse_intervention(item, f"{source}: interventions[{i}]") for i, item in enumerate(items)
        )
        model = doc.get("model")
        if model is not None:
            if not isinstance(model, dict):
                raise SpecError(f"{source}: 'model' must be an object (a fingerprint), got {model!r}")
            bad = set(model) - set(FINGERPRINT_KEYS) - {"name"}
            if bad:
                raise SpecError(
                    f"{source}: model fingerprint has unknown key(s) {sorted(bad)}; "
                    f"allowed: {sorted((*FINGERPRINT_KEYS, 'name'))}"
                )
        provenance = doc.get("provenance", {})
        if not isinstance(provenance, dict):
            raise SpecError(f"{source}: 'provenance' must be an object, got {provenance!r}")
        return cls(interventions=interventions, model=model, provenance=provenance, version=version)

    @classmethod
    def from_json(cls, text: str, *, source: str = "spec") -> SteeringSpec:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{source}: malformed JSON: {exc}") from None
        return cls.from_dict(doc, source=source)

    @classmethod
    def single(
        cls,
        layer: Any,
        site: str,
        channels: Any = "all",
        scale: float = 1.0,
        positions: str = "all",
        **extra: Any,
    ) -> SteeringSpec:
        return cls.from_dict(
            {
                "version": SPEC_VERSION,
                "interventions": [
                    {
                        "layer": layer,
                        "site": site,
                        "channels": channels,
                        "scale": scale,
                        "positions": positions,
                    }
                ],
                **extra,
            }
        )

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": self.version,
            "interventions": [iv.to_dict() for iv in self.interventions],
        }
        if self.model is not None:
            doc["model"] = dict(self.model)
        doc["provenance"] = dict(self.provenance)
        return doc

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write atomically: a crash never leaves a half-written spec behind."""
        from lm_eval_ssmsteer.files import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @property
    def sha256(self) -> str:
        """Hash of what the spec *does* (version + interventions), not of its free-form provenance."""
        canonical = json.dumps(
            {"version": self.version, "interventions": [iv.to_dict() for iv in self.interventions]},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def _parse_intervention(item: Any, where: str) -> Intervention:
    if not isinstance(item, dict):
        raise SpecError(f"{where}: must be an object, got {item!r}")
    unknown = set(item) - _INTERVENTION_KEYS
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_INTERVENTION_KEYS)}")
    for required in ("layer", "site", "scale"):
        if required not in item:
            raise SpecError(f"{where}: missing required key {required!r}")

    site = item["site"]
    if site not in site_names():
        raise SpecError(f"{where}: site={site!r} is not a known site; allowed: {', '.join(site_names())}")

    layers = _parse_index_set(item["layer"], f"{where}.layer")
    channels = _parse_index_set(item.get("channels", "all"), f"{where}.channels")

    scale = item["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise SpecError(f"{where}.scale: must be a number, got {scale!r}")
    if not math.isfinite(scale):
        raise SpecError(f"{where}.scale: must be a finite number, got {scale!r}")
    if site == "delta" and scale < 0:
        raise SpecError(
            f"{where}.scale: {scale!r} on site 'delta' is not allowed: Δ is a step size and must stay >= 0 "
            "(a negative Δ makes exp(ΔA) grow without bound); allowed: any finite number >= 0"
        )

    positions = item.get("positions", "all")
    if positions not in POSITIONS:
        raise SpecError(f"{where}.positions: {positions!r} is not allowed; allowed: {', '.join(POSITIONS)}")
    return Intervention(layers=layers, site=site, channels=channels, scale=float(scale), positions=positions)


def _parse_index_set(value: Any, where: str) -> tuple[int, ...] | str:
    if value == "all":
        return "all"
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(f'{where}: must be an integer, a non-empty list of integers, or "all"; got {value!r}')
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int):
            raise SpecError(f"{where}: {v!r} is not an integer index")
        if v < 0:
            raise SpecError(f"{where}: index {v} is negative; indices start at 0")
        out.append(v)
    if len(set(out)) != len(out):
        raise SpecError(f"{where}: repeated indices in {list(value)}")
    return tuple(out)


# -- presets -------------------------------------------------------------------------------------
_PAPER_CHANNELS = [4, 38, 84, 94, 163, 171, 268, 363, 401, 497, 564, 568, 582, 654, 659, 686]
_MAMBA_130M = {"architecture": "mamba", "n_layers": 24, "d_model": 768, "d_inner": 1536, "d_state": 16}

PRESETS: dict[str, dict[str, Any]] = {
    "paper-mamba-130m": {
        "version": 1,
        "interventions": [
            {"layer": 20, "site": "mixer_out", "channels": _PAPER_CHANNELS, "scale": 5.0, "positions": "all"}
        ],
        "model": {**_MAMBA_130M, "name": "state-spaces/mamba-130m-hf"},
        "provenance": {
            "source": "arXiv 2602.22719, authors' code: forward hook on backbone.layers[20].mixer output",
        },
    },
    "paper-mamba-130m-dtgate": {
        "version": 1,
        "interventions": [
            {"layer": 20, "site": "delta", "channels": "all", "scale": 1.5, "positions": "all"}
        ],
        "model": {**_MAMBA_130M, "name": "state-spaces/mamba-130m-hf"},
        "provenance": {
            "source": "arXiv 2602.22719 'bottleneck gate' (x1.5 on layer 20's time step), applied to "
            "delta after softplus, where transformers 5.x computes it",
        },
    },
}


def load_spec(ref: str | Path | dict | SteeringSpec) -> SteeringSpec:
    """A spec from a preset name, a JSON file path, an inline JSON string, or a dict."""
    if isinstance(ref, SteeringSpec):
        return ref
    if isinstance(ref, dict):
        return SteeringSpec.from_dict(ref)
    text = str(ref)
    if text in PRESETS:
        return SteeringSpec.from_dict(PRESETS[text], source=f"preset {text!r}")
    if text.lstrip().startswith("{"):
        return SteeringSpec.from_json(text, source="inline spec")
    path = Path(text)
    if not path.is_file():
        raise SpecError(
            f"steer={text!r} is neither a preset ({', '.join(PRESETS)}) nor an existing JSON file"
        )
    return SteeringSpec.from_json(path.read_text(), source=str(path))
