"""Applying a steering spec to a loaded model: ``with steer(model, spec): ...``.

How each site is reached, so that steered layers keep transformers' own code and kernels:
- ``mixer_out`` and ``residual``: a forward hook on the mixer / block multiplies its output.
- ``delta``, ``B``, ``C`` (and ``ssm_out``, ``gate`` on Mamba-1): while a steered mixer runs, the
  scan functions its modeling module calls (``mamba_selective_scan`` / ``mamba_selective_state_update``,
  ``mamba2_chunk_scan`` / ``mamba2_selective_state_update``; names in ``compat``) are swapped for
  wrappers that scale what they are handed and call the very same function transformers resolved: the
  mamba-ssm CUDA kernel when it is installed, the torch reference otherwise. The scan keeps its own
  softplus, bias and fp32 arithmetic: for ``delta`` only the steered entries of its Δ input change (to
  the input whose softplus is the scaled Δ); ``ssm_out`` and ``gate`` scale the scan's gated output
  y·SiLU(z), which is the same product. The fused training-only path is switched off for steered
  mixers so it cannot bypass them.
- ``ssm_out``, ``gate`` on Mamba-2: a pre-hook on the mixer's gated RMSNorm scales its input y (the
  norm multiplies it by SiLU(z) before normalising).
Every factor is fp32 and each tensor is rounded once after scaling, so where a factor is 1 the tensor
comes back bit for bit: a scale of 1.0 reproduces the unsteered model in every dtype.
Un-steered layers run untouched. Pad positions (attention mask 0) are never scaled. ``positions``
selects the prompt (a forward that starts a sequence) or the generated tokens (a forward that continues
a cache the same model already filled); lm-eval loglikelihood inputs are prompts throughout.
Every hook is removed and every swapped function restored on exit, exceptions included.

``steer_factors`` applies given per-channel factor tensors through the same hooks; the factors may
require grad, so a loss can be differentiated with respect to the scale of every channel (the finder's
attribution).
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lm_eval_ssmsteer.compat import forward_cache, output_cache, scan_functions
from lm_eval_ssmsteer.sites import ArchInfo, SitePlan, describe_model, resolve
from lm_eval_ssmsteer.spec import Intervention, SteeringSpec, load_spec

# Sites reached by wrapping the scan functions (prefill and decode) of the mixer's modeling module.
INNER_SITES = {"mamba1": ("delta", "B", "C", "ssm_out", "gate"), "mamba2": ("delta", "B", "C")}


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

    def factor(self, state: _ForwardState) -> torch.Tensor | None:
        """fp32 (c,) if every position is scaled alike, (b, l, c) if pads or phases differ; None = no-op."""
        out = None
        for positions, vec in self.by_positions.items():
            if positions not in ("all", state.phase):
                continue
            f = vec if state.keep is None else torch.where(state.keep[..., None], vec, vec.new_ones(()))
            out = f if out is None else out * f
        return out


def _scaled(t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """t times the fp32 factor f, rounded once to t's dtype (where f is 1, t comes back bit for bit)."""
    return (t * f).to(t.dtype)


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
        cache = forward_cache(kwargs)
        self.state.phase = "generated" if cache is not None and cache in self.state.seen_caches else "prompt"
        mask = kwargs.get("attention_mask")
        keep = None
        if mask is not None and mask.dim() == 2 and not bool(mask.all()):
            keep = mask.bool()
        self.state.keep = keep
        if cache is not None:
            self.state.seen_caches.add(cache)

    def _end_forward(self, module, args, kwargs, output):
        cache = output_cache(output)
        if cache is not None:
            self.state.seen_caches.add(cache)
        self.state.phase, self.state.keep = "prompt", None

    def _factor(self, scaler: _SiteScaler | None) -> torch.Tensor | None:
        return None if scaler is None else scaler.factor(self.state)

    # -- sites ----------------------------------------------------------------------------------
    def _output_hook(self, scaler: _SiteScaler):
        def hook(module, args, output):
            f = self._factor(scaler)
            return output if f is None else _scaled(output, f)

        return hook

    def _gated_norm_hook(self, ssm_out: _SiteScaler | None, gate: _SiteScaler | None):
        """Mamba-2: the norm gates y with SiLU(z) in fp32; scaling y (rounded once) by the factors of both
        sites scales that product, and where the factors are 1 the norm sees exactly its own input."""

        def hook(module, args, kwargs):
            factors = [f for f in (self._factor(ssm_out), self._factor(gate)) if f is not None]
            if not factors:
                return None
            f = factors[0] if len(factors) == 1 else factors[0] * factors[1]
            if args:
                return (_scaled(args[0], f), *args[1:]), kwargs
            kwargs["hidden_states"] = _scaled(kwargs["hidden_states"], f)
            return args, kwargs

        return hook

    def _install_scan_swap(self, mixer: torch.nn.Module, sites: dict[str, _SiteScaler]) -> None:
        module_dict, (scan_name, step_name, fused_name) = scan_functions(mixer, self.arch.family)
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
        gated = [sites[s] for s in ("ssm_out", "gate") if s in sites]

        def scale_inputs(dt, B, C, kwargs, bias_key, softplus_key, to_layout):
            f = self._factor(delta)
            if f is not None:
                dt = _steered_dt(dt, to_layout(f), kwargs.get(bias_key), kwargs.get(softplus_key, False))
            f = self._factor(b_site)
            if f is not None:
                B = _scaled(B, to_layout(f))
            f = self._factor(c_site)
            if f is not None:
                C = _scaled(C, to_layout(f))
            return dt, B, C

        def scale_output(out, to_layout):
            # the scan returns y·SiLU(z) (D skip included): ssm_out and gate both scale that product
            for scaler in gated:
                f = self._factor(scaler)
                if f is not None:
                    out = _scaled(out, to_layout(f))
            return out

        def scan(u, dt, A, B, C, *args, **kwargs):  # u, dt, z: (b, d_inner, l); B, C: (b, d_state, l)
            dt, B, C = scale_inputs(dt, B, C, kwargs, "delta_bias", "delta_softplus", _channels_first)
            result = scan_fn(u, dt, A, B, C, *args, **kwargs)
            if isinstance(result, tuple):  # (y, last state): the state is not y and stays as it is
                return (scale_output(result[0], _channels_first), *result[1:])
            return scale_output(result, _channels_first)

        def step(state, x, dt, A, B, C, *args, **kwargs):  # x, dt, z: (b, d_inner); B, C: (b, d_state)
            dt, B, C = scale_inputs(dt, B, C, kwargs, "dt_bias", "dt_softplus", _one_step)
            return scale_output(step_fn(state, x, dt, A, B, C, *args, **kwargs), _one_step)

        return scan, step

    def _mamba2_wrappers(self, scan_fn, step_fn, sites):
        delta, b_site, c_site = sites.get("delta"), sites.get("B"), sites.get("C")
        groups, d_state = self.arch.n_groups, self.arch.d_state

        def scale_bc(B, C, per_group):
            f = self._factor(b_site)
            if f is not None:
                B = _scaled(B, per_group(f))
            f = self._factor(c_site)
            if f is not None:
                C = _scaled(C, per_group(f))
            return B, C

        def scan(x, dt, A, B, C, *args, **kwargs):  # x: (b, l, h, p); dt: (b, l, h); B, C: (b, l, g, n)
            f = self._factor(delta)
            if f is not None:
                limit = tuple(kwargs.get("dt_limit", _NO_LIMIT))
                dt = _steered_dt(dt, f, kwargs.get("dt_bias"), kwargs.get("dt_softplus", False), limit)
                if limit != _NO_LIMIT:
                    kwargs["dt_limit"] = _NO_LIMIT  # _steered_dt clamped Δ before scaling it
            B, C = scale_bc(B, C, lambda f: f.unflatten(-1, (groups, d_state)))
            return scan_fn(x, dt, A, B, C, *args, **kwargs)

        def step(state, x, dt, A, B, C, *args, **kwargs):  # x, dt: (b, h, p); B, C: (b, g, n)
            f = self._factor(delta)
            if f is not None:
                softplus = kwargs.get("dt_softplus", False)
                dt = _steered_head_dt(dt, _one_step(f), kwargs.get("dt_bias"), softplus)
            B, C = scale_bc(B, C, lambda f: _one_step(f).unflatten(-1, (groups, d_state)))
            return step_fn(state, x, dt, A, B, C, *args, **kwargs)

        return scan, step


_NO_LIMIT = (0.0, float("inf"))


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y > 0, on the branch torch's and the kernels' softplus take: x itself above 20."""
    return torch.where(y > 20.0, y, y + torch.log(-torch.expm1(-y)))


def _steered_head_dt(
    dt: torch.Tensor, f: torch.Tensor, bias: torch.Tensor | None, softplus: bool
) -> torch.Tensor:
    """``_steered_dt`` for Mamba-2's decode step, whose Δ (b, h, p) and bias (h, p) are one value per head
    broadcast over head_dim (stride 0). The result keeps that layout: mamba-ssm's state update computes
    such a "tied" Δ once per head, and a materialised copy would take its other branch, which rounds
    differently (scale 1.0 would then not be the identity)."""
    if dt.stride(-1) != 0 or (bias is not None and bias.stride(-1) != 0):
        return _steered_dt(dt, f[..., None], bias, softplus)
    per_head = _steered_dt(dt[..., 0], f, None if bias is None else bias[..., 0], softplus)
    return per_head[..., None].expand_as(dt)


def _steered_dt(
    dt: torch.Tensor,
    f: torch.Tensor,
    bias: torch.Tensor | None,
    softplus: bool,
    limit: tuple[float, float] = _NO_LIMIT,
) -> torch.Tensor:
    """The Δ input dt for which the scan's own Δ = clamp(softplus(dt + bias)) comes out times f (fp32,
    broadcast to dt's layout).

    The scan keeps its bias, its softplus and its fp32 arithmetic; only the steered entries of dt
    change. So where f is 1 the scan computes exactly what it computes unsteered, in every dtype and on
    the kernels as well. Δ is a step size: a target below the smallest positive float is taken as that
    float. A factor that requires grad (the finder's attribution) takes the differentiable inverse
    everywhere.
    """
    b = torch.zeros((), device=dt.device) if bias is None else bias.float()
    if b.dim() == 1 and dt.dim() == 3 and dt.shape[1] == b.shape[0]:  # Mamba-1 scan layout (b, d, l)
        b = b[:, None]
    x = dt.float() + b
    value = F.softplus(x) if softplus else x
    limited = limit != _NO_LIMIT
    clamped = value.clamp(min=limit[0], max=limit[1]) if limited else value
    target = (clamped * f).clamp(min=torch.finfo(torch.float32).tiny)
    steered = ((_inverse_softplus(target) if softplus else target) - b).to(dt.dtype)
    if f.requires_grad:
        return steered
    changed = f != 1.0
    if limited:
        changed = changed | (value < limit[0]) | (value > limit[1])
    return torch.where(changed, steered, dt)


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
