"""Applying a steering spec to a loaded model: ``with steer(model, spec): ...``.

How each site is reached, so that steered layers keep transformers' own code and kernels:
- ``mixer_out`` and ``residual``: a forward hook on the mixer / block multiplies its output.
- ``delta``, ``B``, ``C`` (and ``ssm_out``, ``gate`` on Mamba-1): while a steered mixer runs, the
  scan functions its modeling module calls (``mamba_selective_scan`` / ``mamba_selective_state_update``,
  ``mamba2_chunk_scan`` / ``mamba2_selective_state_update``) are swapped for wrappers that scale the
  tensor they are handed and call the very same function transformers resolved: the mamba-ssm CUDA
  kernel when it is installed, the torch reference otherwise. Δ is handed over already
  softplus-ed (and clamped) and scaled, with ``delta_softplus=False``; a postponed gate is applied after
  the scan. The fused training-only path is switched off for steered mixers so it cannot bypass them.
- ``ssm_out``, ``gate`` on Mamba-2: a pre-hook on the mixer's gated RMSNorm scales its input y or
  SiLU(z) before normalisation.
Un-steered layers run untouched. Pad positions (attention mask 0) are never scaled. ``positions``
selects the prompt (a forward that starts a sequence) or the generated tokens (a forward that continues
a cache the same model already filled); lm-eval loglikelihood inputs are prompts throughout.
Every hook is removed and every swapped function restored on exit, exceptions included.

``steer_factors`` applies given per-channel factor tensors through the same hooks; the factors may
require grad, so a loss can be differentiated with respect to the scale of every channel (the finder's
attribution).
"""

from __future__ import annotations

import sys
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lm_eval_ssmsteer.sites import ArchInfo, SitePlan, describe_model, resolve
from lm_eval_ssmsteer.spec import Intervention, SteeringSpec, load_spec

INNER_SITES = {"mamba1": ("delta", "B", "C", "ssm_out", "gate"), "mamba2": ("delta", "B", "C")}
SCAN_FUNCTIONS = {
    "mamba1": ("mamba_selective_scan", "mamba_selective_state_update", "mamba_inner_fn"),
    "mamba2": ("mamba2_chunk_scan", "mamba2_selective_state_update", "mamba2_split_conv1d_scan_combined"),
}


@dataclass
class _ForwardState:
    """What the current model forward looks like: set by a pre-hook on the backbone."""

    phase: str = "prompt"
    keep: torch.Tensor | None = None  # (b, l) bool, False at pad positions; None = no padding
    seen_caches: weakref.WeakSet = field(default_factory=weakref.WeakSet)


class _SiteScaler:
    """The multiplicative factor of one (layer, site), built once per forward from its plans."""

    def __init__(self, plans: list[SitePlan], width: int, device: torch.device):
        by_positions: dict[str, torch.Tensor] = {}
        for plan in plans:
            vec = by_positions.setdefault(plan.positions, torch.ones(width, device=device))
            if plan.channels is None:
                vec.mul_(plan.scale)
            else:
                idx = torch.tensor(plan.channels, device=device)
                vec[idx] = vec[idx] * plan.scale
        self.by_positions = by_positions

    def factor(self, state: _ForwardState, dtype: torch.dtype) -> torch.Tensor | None:
        """(c,) when every position is scaled alike, (b, l, c) when pads or phases differ; None = no-op."""
        out = None
        for positions, vec in self.by_positions.items():
            if positions not in ("all", state.phase):
                continue
            vec = vec.to(dtype)
            f = vec if state.keep is None else torch.where(state.keep[..., None], vec, vec.new_ones(()))
            out = f if out is None else out * f
        return out


def _channels_first(f: torch.Tensor) -> torch.Tensor:
    """A factor for (b, c, l) tensors: (c, 1) or (b, c, l)."""
    return f[:, None] if f.dim() == 1 else f.transpose(1, 2)


def _one_step(f: torch.Tensor) -> torch.Tensor:
    """A factor for single-token (b, c) tensors."""
    return f if f.dim() == 1 else f[:, -1, :]


def _swap_globals(module_dict: dict, replacements: dict[str, Callable]) -> dict[str, Callable]:
    saved = {name: module_dict[name] for name in replacements}
    module_dict.update(replacements)
    return saved


class _Steerer:
    def __init__(self, model: torch.nn.Module, spec: SteeringSpec, arch: ArchInfo):
        self.model = model
        self.arch = arch
        self.state = _ForwardState()
        self.handles: list[Any] = []
        self.restore: list[tuple[dict, dict]] = []
        device = next(model.parameters()).device
        grouped: dict[tuple[int, str], list[SitePlan]] = defaultdict(list)
        for plan in resolve(spec, arch):
            grouped[(plan.layer, plan.site)].append(plan)
        self.scalers: dict[int, dict[str, _SiteScaler]] = defaultdict(dict)
        for (layer, site), plans in grouped.items():
            self.scalers[layer][site] = _SiteScaler(plans, arch.site_width(site), device)

    # -- installation -------------------------------------------------------------------------
    def install(self) -> None:
        backbone = self.model.base_model
        self.handles.append(backbone.register_forward_pre_hook(self._begin_forward, with_kwargs=True))
        self.handles.append(
            backbone.register_forward_hook(self._end_forward, with_kwargs=True, always_call=True)
        )
        for layer, sites in self.scalers.items():
            block = backbone.layers[layer]
            mixer = block.mixer
            if "mixer_out" in sites:
                self.handles.append(mixer.register_forward_hook(self._output_hook(sites["mixer_out"])))
            if "residual" in sites:
                self.handles.append(block.register_forward_hook(self._output_hook(sites["residual"])))
            inner = {s: sites[s] for s in INNER_SITES[self.arch.family] if s in sites}
            if inner:
                self._install_scan_swap(mixer, inner)
            if self.arch.family == "mamba2" and ("ssm_out" in sites or "gate" in sites):
                self.handles.append(
                    mixer.norm.register_forward_pre_hook(
                        self._gated_norm_hook(sites.get("ssm_out"), sites.get("gate")), with_kwargs=True
                    )
                )

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        while self.restore:
            module_dict, saved = self.restore.pop()
            module_dict.update(saved)

    # -- forward bookkeeping ------------------------------------------------------------------
    def _begin_forward(self, module, args, kwargs):
        cache = kwargs.get("cache_params")
        self.state.phase = "generated" if cache is not None and cache in self.state.seen_caches else "prompt"
        mask = kwargs.get("attention_mask")
        keep = None
        if mask is not None and mask.dim() == 2 and not bool(mask.all()):
            keep = mask.bool()
        self.state.keep = keep
        if cache is not None:
            self.state.seen_caches.add(cache)

    def _end_forward(self, module, args, kwargs, output):
        cache = getattr(output, "cache_params", None)
        if cache is not None:
            self.state.seen_caches.add(cache)
        self.state.phase, self.state.keep = "prompt", None

    def _factor(self, scaler: _SiteScaler | None, dtype: torch.dtype) -> torch.Tensor | None:
        return None if scaler is None else scaler.factor(self.state, dtype)

    # -- sites ----------------------------------------------------------------------------------
    def _output_hook(self, scaler: _SiteScaler):
        def hook(module, args, output):
            f = self._factor(scaler, output.dtype)
            return output if f is None else output * f

        return hook

    def _gated_norm_hook(self, ssm_out: _SiteScaler | None, gate: _SiteScaler | None):
        def hook(module, args, kwargs):
            y = args[0] if args else kwargs.pop("hidden_states")
            z = args[1] if len(args) > 1 else kwargs.pop("gate", None)
            f_y = self._factor(ssm_out, y.dtype)
            if f_y is not None:
                y = y * f_y
            f_z = self._factor(gate, torch.float32)
            if f_z is not None and z is not None:
                # scale SiLU(z) itself, then hand the norm the already-gated input (it skips its own gate)
                y, z = y.to(torch.float32) * (F.silu(z.to(torch.float32)) * f_z), None
            return (y, z), kwargs

        return hook

    def _install_scan_swap(self, mixer: torch.nn.Module, sites: dict[str, _SiteScaler]) -> None:
        module_dict = vars(sys.modules[type(mixer).__module__])
        scan_name, step_name, fused_name = SCAN_FUNCTIONS[self.arch.family]
        missing = [n for n in (scan_name, step_name, fused_name) if n not in module_dict]
        if missing:
            import transformers

            raise RuntimeError(
                f"steering sites {sorted(sites)} need {missing} in {type(mixer).__module__}, which "
                f"transformers {transformers.__version__} does not have; supported: transformers>=5.17,<6"
            )
        make = self._mamba2_wrappers if self.arch.family == "mamba2" else self._mamba1_wrappers
        scan, step = make(module_dict[scan_name], module_dict[step_name], sites)
        replacements = {scan_name: scan, step_name: step, fused_name: _no_fused_path}

        def swap_in(module, args):
            self.restore.append((module_dict, _swap_globals(module_dict, replacements)))

        def swap_out(module, args, output):
            if self.restore:
                module_dict_, saved = self.restore.pop()
                module_dict_.update(saved)

        self.handles.append(mixer.register_forward_pre_hook(swap_in))
        self.handles.append(mixer.register_forward_hook(swap_out, always_call=True))

    def _mamba1_wrappers(self, scan_fn, step_fn, sites):
        delta, b_site, c_site = sites.get("delta"), sites.get("B"), sites.get("C")
        ssm_out, gate = sites.get("ssm_out"), sites.get("gate")

        def scale_inputs(dt, B, C, kwargs, bias_key, softplus_key, to_layout):
            f = self._factor(delta, dt.dtype)
            if f is not None:
                bias = kwargs.pop(bias_key, None)
                if bias is not None:
                    bias = bias.to(dt.dtype)
                    dt = dt + (bias[:, None] if dt.dim() == 3 else bias)  # (b, d, l) scan or (b, d) step
                if kwargs.pop(softplus_key, False):
                    dt = F.softplus(dt)
                dt = dt * to_layout(f)
                kwargs[bias_key], kwargs[softplus_key] = _zero_bias(bias), False
            f = self._factor(b_site, B.dtype)
            if f is not None:
                B = B * to_layout(f)
            f = self._factor(c_site, C.dtype)
            if f is not None:
                C = C * to_layout(f)
            return dt, B, C

        def gate_after(out, z, to_layout):
            f_y = self._factor(ssm_out, out.dtype)
            if f_y is not None:
                out = out * to_layout(f_y)
            g = F.silu(z)
            f_g = self._factor(gate, g.dtype)
            if f_g is not None:
                g = g * to_layout(f_g)
            return out * g

        postpone_gate = ssm_out is not None or gate is not None

        def scan(u, dt, A, B, C, *args, **kwargs):  # u, dt, z: (b, d_inner, l); B, C: (b, d_state, l)
            dt, B, C = scale_inputs(dt, B, C, kwargs, "delta_bias", "delta_softplus", _channels_first)
            z = kwargs.pop("z", None) if postpone_gate else None
            if postpone_gate:
                kwargs["z"] = None
            result = scan_fn(u, dt, A, B, C, *args, **kwargs)
            if z is None:
                return result
            if isinstance(result, tuple):
                return (gate_after(result[0], z, _channels_first), *result[1:])
            return gate_after(result, z, _channels_first)

        def step(state, x, dt, A, B, C, *args, **kwargs):  # x, dt, z: (b, d_inner); B, C: (b, d_state)
            dt, B, C = scale_inputs(dt, B, C, kwargs, "dt_bias", "dt_softplus", _one_step)
            z = kwargs.pop("z", None) if postpone_gate else None
            if postpone_gate:
                kwargs["z"] = None
            out = step_fn(state, x, dt, A, B, C, *args, **kwargs)
            return out if z is None else gate_after(out, z, _one_step)

        return scan, step

    def _mamba2_wrappers(self, scan_fn, step_fn, sites):
        delta, b_site, c_site = sites.get("delta"), sites.get("B"), sites.get("C")
        groups, d_state = self.arch.n_groups, self.arch.d_state

        def softplus_dt(dt, kwargs):
            bias = kwargs.pop("dt_bias", None)
            if bias is not None:
                dt = dt + bias.to(dt.dtype)
            if kwargs.pop("dt_softplus", False):
                dt = F.softplus(dt)
            kwargs["dt_bias"], kwargs["dt_softplus"] = _zero_bias(bias), False
            return dt

        def scale_bc(B, C, per_group):
            f = self._factor(b_site, B.dtype)
            if f is not None:
                B = B * per_group(f)
            f = self._factor(c_site, C.dtype)
            if f is not None:
                C = C * per_group(f)
            return B, C

        def scan(x, dt, A, B, C, *args, **kwargs):  # x: (b, l, h, p); dt: (b, l, h); B, C: (b, l, g, n)
            f = self._factor(delta, dt.dtype)
            if f is not None:
                dt = softplus_dt(dt, kwargs)
                low, high = kwargs.pop("dt_limit", (0.0, float("inf")))
                dt = torch.clamp(dt, min=low, max=high) * f
                kwargs["dt_limit"] = (0.0, float("inf"))
            B, C = scale_bc(B, C, lambda f: f.unflatten(-1, (groups, d_state)))
            return scan_fn(x, dt, A, B, C, *args, **kwargs)

        def step(state, x, dt, A, B, C, *args, **kwargs):  # x, dt: (b, h, p); B, C: (b, g, n)
            f = self._factor(delta, dt.dtype)
            if f is not None:
                dt = softplus_dt(dt, kwargs) * _one_step(f)[..., None]
            B, C = scale_bc(B, C, lambda f: _one_step(f).unflatten(-1, (groups, d_state)))
            return step_fn(state, x, dt, A, B, C, *args, **kwargs)

        return scan, step


def _zero_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """Δ is handed over with its bias already added; a zero bias (not None) keeps mamba-ssm's Triton
    state update working (2.3.2 dereferences dt_bias unconditionally) and adds exactly nothing."""
    return None if bias is None else torch.zeros_like(bias)


def _no_fused_path(*args: Any, **kwargs: Any) -> None:
    """Stands in for the fused training kernel: None makes the mixer take its steerable path."""
    return None


@contextmanager
def steer(model: torch.nn.Module, spec: SteeringSpec | str | dict | None) -> Iterator[SteeringSpec | None]:
    """Steer ``model`` inside the block; ``spec=None`` is a no-op that installs nothing."""
    if spec is None:
        yield None
        return
    spec = load_spec(spec)
    steerer = _Steerer(model, spec, describe_model(model))
    try:
        steerer.install()
        yield spec
    finally:
        steerer.remove()


@contextmanager
def steer_factors(model: torch.nn.Module, factors: dict[tuple[int, str], torch.Tensor]) -> Iterator[None]:
    """Multiply each (layer, site) by its factor at every non-pad position, inside the block.

    A factor is (width,), or (batch, 1, width) for one factor per sequence of the batch. The factors are
    used as given (not copied), so a factor that requires grad receives the gradient of whatever is
    computed from the steered forward pass.
    """
    if not factors:
        raise ValueError("steer_factors needs at least one (layer, site) factor")
    arch = describe_model(model)
    spec = SteeringSpec(tuple(Intervention((layer,), site, "all", 1.0) for layer, site in factors))
    steerer = _Steerer(model, spec, arch)  # checks every layer and site against the model
    for (layer, site), factor in factors.items():
        width = arch.site_width(site)
        shape = tuple(factor.shape)
        if shape != (width,) and not (len(shape) == 3 and shape[1:] == (1, width)):
            raise ValueError(
                f"factor for layer {layer}, site {site!r} has shape {shape}; the site has {width} "
                f"channels, so the shape must be ({width},) or (batch, 1, {width})"
            )
        steerer.scalers[layer][site].by_positions = {"all": factor}
    try:
        steerer.install()
        yield
    finally:
        steerer.remove()
