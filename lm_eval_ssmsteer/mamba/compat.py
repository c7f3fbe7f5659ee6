"""What differs between the transformers releases this package supports (``transformers>=5.17,<5.26``).

The one place that knows how a release names the parts of its Mamba code that the package reaches
into: forward keywords, output attributes and module-level function names. When a release renames
one of them, this file changes and nothing else does. Every fact here is checked on both ends of the
supported range by CI (``.ci/run`` runs the tests on the lowest and the newest release).

- The cache keyword of the model, block and mixer forwards: ``cache_params`` up to 5.23, ``cache``
  from 5.24 (``cache_params`` still accepted there until 5.40). The model output's attribute likewise.
  The hybrids' models (Bamba, Jamba, ...) take and return ``past_key_values`` up to 5.23, ``cache`` from
  5.24.
- A Mamba layer's cached conv and recurrent states: ``cache.layers[i].conv_states[0]`` (after
  ``has_previous_state``) up to 5.23, ``cache.get_conv_state(i)`` from 5.24.
- Mamba-2's gated RMSNorm: over the whole width up to 5.23, per group of width / n_groups from 5.24;
  Bamba's and Granite 4.0-H's likewise, Zamba2's and Nemotron-H's per group throughout, Falcon-H1's
  per group by its ``n_groups``.
- The scan functions of each mixer family's modeling module (``SCAN_FUNCTIONS``): the same names
  across the range, except that FalconMamba's and Jamba's modules have no fused ``mamba_inner_fn`` from
  5.25 (their forwards call ``mamba_scan_forward``, which calls the two scan functions by these
  names). From 5.25, with the ``kernels`` package it requires, each module-level scan function is an
  ``nn.Module`` that routes a mixer's calls to that mixer's private wrapper, which ``kernelize`` (on by
  default in ``from_pretrained``) may replace with a hub kernel on CUDA; swapping the module-level name
  still wraps whatever runs inside (tests/test_steering.py pins it).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

SUPPORTED_RANGE = ">=5.17,<5.26"

# Newest name first: a forward's kwargs hold one of them, whichever the caller used.
CACHE_NAMES = ("cache", "cache_params", "past_key_values")

# Module-level functions each mixer family's modeling module calls for the scan: (prefill, one-token
# decode, fused training path). Steering wraps the first two and switches off the third.
SCAN_FUNCTIONS = {
    "mamba1": ("mamba_selective_scan", "mamba_selective_state_update", "mamba_inner_fn"),
    "mamba2": ("mamba2_chunk_scan", "mamba2_selective_state_update", "mamba2_split_conv1d_scan_combined"),
}


def forward_cache(kwargs: Mapping[str, Any]) -> Any:
    """The cache handed to a model, block or mixer forward as a keyword (None when there is none)."""
    for name in CACHE_NAMES:
        cache = kwargs.get(name)
        if cache is not None:
            return cache
    return None


def pop_cache(kwargs: dict[str, Any]) -> Any:
    """Like ``forward_cache``, and removes every cache keyword from ``kwargs`` (for a forward of our own
    that passes the rest on)."""
    cache = forward_cache(kwargs)
    for name in CACHE_NAMES:
        kwargs.pop(name, None)
    return cache


def output_cache(output: Any) -> Any:
    """The cache a model forward returned in its output (None when it returned none). Only the output's
    real fields are read: 5.24 keeps ``cache_params`` as a property that warns on every read."""
    fields = getattr(type(output), "__dataclass_fields__", {})
    for name in CACHE_NAMES:
        cache = getattr(output, name, None) if name in fields else None
        if cache is not None:
            return cache
    return None


def scan_functions(mixer: Any, family: str) -> tuple[dict[str, Any], tuple[str, str, str | None]]:
    """(the globals its ``forward`` reads, the mixer family's (prefill, decode, fused) scan function names).
    The forward's own globals, not those of the module defining the mixer's class: a subclass that
    inherits ``forward`` calls the functions of the module that wrote it. The fused name is None where
    the module has no fused path (neither the function nor a call to it in ``forward``: FalconMamba and
    Jamba from 5.25, whose B/C/dt norms the fused kernel cannot apply)."""
    forward = inspect.unwrap(type(mixer).forward)
    module_dict = forward.__globals__
    scan, step, _ = SCAN_FUNCTIONS[family]
    fused = fused_scan_name(module_dict, family, forward)
    missing = [n for n in (scan, step, fused) if n is not None and n not in module_dict]
    if missing:
        import transformers

        raise RuntimeError(
            f"{module_dict.get('__name__')} has no {missing} in transformers {transformers.__version__}; "
            f"lm_eval_ssmsteer supports transformers{SUPPORTED_RANGE}"
        )
    return module_dict, (scan, step, fused)


def fused_scan_name(module_dict: Mapping[str, Any], family: str, forward: Any = None) -> str | None:
    """The family's fused training function as ``module_dict`` names it, None where the modeling module
    has no fused path (FalconMamba and Jamba from 5.25): neither the function nor, in ``forward`` when
    given, a call to it (a missing function that the forward still calls is an error for
    ``scan_functions``)."""
    fused = SCAN_FUNCTIONS[family][2]
    called = forward is not None and fused in forward.__code__.co_names
    return fused if fused in module_dict or called else None


def cached_states(cache: Any, layer_idx: int) -> tuple[Any, Any]:
    """(conv state, recurrent state) of a Mamba layer when ``cache`` already holds them (a forward that
    continues a sequence), else (None, None).

    5.24 reads them with ``get_conv_state``/``get_recurrent_state``; 5.17 - 5.23 from
    ``cache.layers[i].conv_states[0]`` once ``has_previous_state(i)``."""
    if cache is None:
        return None, None
    if hasattr(cache, "get_conv_state"):
        return cache.get_conv_state(layer_idx, state_idx=0), cache.get_recurrent_state(layer_idx, state_idx=0)
    if not cache.has_previous_state(layer_idx):
        return None, None
    layer = cache.layers[layer_idx]
    return layer.conv_states[0], layer.recurrent_states[0]


def records_past(cache: Any, layer_idx: int) -> bool:
    """Whether the cache is recording a past (then even a one-token forward runs the full conv)."""
    if hasattr(cache, "is_recording_past"):
        return cache.is_recording_past(layer_idx)
    return bool(cache.layers[layer_idx].record_past)


def gated_norm_group_size(norm: Any, width: int) -> int:
    """How many channels Mamba-2's gated RMSNorm normalises together: the whole width up to 5.23
    (``MambaRMSNormGated`` ignores ``n_groups``), ``norm.group_size`` = width / n_groups from 5.24;
    Falcon-H1's norm keeps ``n_groups`` instead."""
    if hasattr(norm, "group_size"):
        return norm.group_size
    return width // getattr(norm, "n_groups", 1)


# Mamba-2's gated RMSNorm: forward(hidden_states, gate=None), the same names across the range
GATED_NORM_Y, GATED_NORM_Z = "hidden_states", "gate"


def gated_norm_operands(args: tuple, kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    """(y, z) of a call of Mamba-2's gated RMSNorm, as its forward pre-hook receives them (z: None where
    the caller gates nothing)."""
    y = args[0] if args else kwargs[GATED_NORM_Y]
    z = args[1] if len(args) > 1 else kwargs.get(GATED_NORM_Z)
    return y, z


def cache_keyword(model: Any) -> str:
    """The name under which ``model``'s forward takes a cache (for code that passes one itself)."""
    import inspect

    params = inspect.signature(type(model).forward).parameters
    return next((name for name in CACHE_NAMES if name in params), CACHE_NAMES[-1])
