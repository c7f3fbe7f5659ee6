"""Applying a steering plan to a loaded model: ``with steer(model, spec_or_plan): ...``.

How each way of reaching a site (``mamba.sites.REACHES``) is implemented, so that steered layers keep
transformers' own code and kernels:
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
  norm multiplies it by SiLU(z) before normalising); on Falcon-H1, whose norm is optional, the Mamba-2
  scan functions' output y (or y·SiLU(z) where the decode step is handed z) is scaled instead.
In a hybrid the same hooks go on the Mamba mixers of the steered layers (``mamba.arch.mamba_mixers``);
its attention and MLP layers are never touched.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lm_eval_ssmsteer.mamba import sites as S
from lm_eval_ssmsteer.mamba.arch import block_hidden, mamba_mixers, with_block_hidden
from lm_eval_ssmsteer.mamba.compat import GATED_NORM_Y, forward_cache, output_cache, scan_functions
from lm_eval_ssmsteer.mamba.patch import returns_none, swap_during_calls
from lm_eval_ssmsteer.spec import SteeringSpec
from lm_eval_ssmsteer.steering.plan import SiteFactors, SteeringPlan

SCAN_REACHES = (S.SCAN_DELTA, S.SCAN_B, S.SCAN_C, S.SCAN_GATED_OUTPUT, S.SCAN_OUTPUT)


@dataclass
class _ForwardState:
    """What the current model forward looks like: set by a pre-hook on the backbone."""

    phase: str = "prompt"
    keep: torch.Tensor | None = None  # (b, l) bool, False at pad positions; None = no padding
    seen_caches: weakref.WeakSet = field(default_factory=weakref.WeakSet)


def _scaled(t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """t times the fp32 factor f, rounded once to t's dtype (where f is 1, t comes back bit for bit)."""
    return (t * f).to(t.dtype)


def _channels_first(f: torch.Tensor) -> torch.Tensor:
    """A factor for (b, c, l) tensors: (c, 1) or (b, c, l)."""
    return f[:, None] if f.dim() == 1 else f.transpose(1, 2)


def _one_step(f: torch.Tensor) -> torch.Tensor:
    """A factor for single-token (b, c) tensors."""
    return f if f.dim() == 1 else f[:, -1, :]


class _Steerer:
    def __init__(self, model: torch.nn.Module, plan: SteeringPlan):
        self.model = model
        self.plan = plan
        self.state = _ForwardState()
        self.handles: list[Any] = []

    def factor(self, group: list[SiteFactors]) -> torch.Tensor | None:
        """The fp32 factor of the sites in ``group`` for this forward: (c,) if every position is scaled
        alike, (b, l, c) if pads or phases differ; None = nothing to do."""
        out = None
        for by_positions in group:
            for positions, vec in by_positions.items():
                if positions not in ("all", self.state.phase):
                    continue
                f = vec if self.state.keep is None else torch.where(self.state.keep[..., None], vec, 1.0)
                out = f if out is None else out * f
        return out

    # -- installation -------------------------------------------------------------------------
    def install(self) -> None:
        backbone = self.model.base_model
        self.handles.append(backbone.register_forward_pre_hook(self._begin_forward, with_kwargs=True))
        self.handles.append(
            backbone.register_forward_hook(self._end_forward, with_kwargs=True, always_call=True)
        )
        family, architecture = self.plan.arch.family, self.plan.arch.architecture
        mixers = mamba_mixers(self.model)
        for layer, sites in self.plan.factors.items():
            by_reach: dict[str, list[SiteFactors]] = {}
            for site, factors in sites.items():
                by_reach.setdefault(S.site_row(site, family, architecture).reach, []).append(factors)
            block, mixer = backbone.layers[layer], mixers.get(layer)  # None: no Mamba (residual only)
            if S.MIXER_OUTPUT in by_reach:
                self.handles.append(mixer.register_forward_hook(self._output_hook(by_reach[S.MIXER_OUTPUT])))
            if S.BLOCK_OUTPUT in by_reach:
                self.handles.append(block.register_forward_hook(self._output_hook(by_reach[S.BLOCK_OUTPUT])))
            if S.GATED_NORM_INPUT in by_reach:
                hook = self._gated_norm_hook(by_reach[S.GATED_NORM_INPUT])
                self.handles.append(mixer.norm.register_forward_pre_hook(hook, with_kwargs=True))
            scans = {r: by_reach[r] for r in SCAN_REACHES if r in by_reach}
            if scans:
                self._install_scan_swap(mixer, scans)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    # -- forward bookkeeping ------------------------------------------------------------------
    def _begin_forward(self, module, args, kwargs):
        cache = forward_cache(kwargs)
        self.state.phase = "generated" if cache is not None and cache in self.state.seen_caches else "prompt"
        mask = kwargs.get("attention_mask")
        keep = None
        if mask is not None and mask.dim() == 2:
            # a hybrid's cached forward gets the mask of the whole sequence: keep that of its own tokens
            mask = mask[:, -_input_length(args, kwargs) :]
            keep = None if bool(mask.all()) else mask.bool()
        self.state.keep = keep
        if cache is not None:
            self.state.seen_caches.add(cache)

    def _end_forward(self, module, args, kwargs, output):
        cache = output_cache(output)
        if cache is not None:
            self.state.seen_caches.add(cache)
        self.state.phase, self.state.keep = "prompt", None

    # -- reaches --------------------------------------------------------------------------------
    def _output_hook(self, group: list[SiteFactors]):
        def hook(module, args, output):
            f = self.factor(group)
            if f is None:
                return output
            return with_block_hidden(output, _scaled(block_hidden(output), f))

        return hook

    def _gated_norm_hook(self, group: list[SiteFactors]):
        """Mamba-2: the norm gates y with SiLU(z) in fp32; scaling y (rounded once) scales that product,
        and where the factors are 1 the norm sees exactly its own input."""

        def hook(module, args, kwargs):
            f = self.factor(group)
            if f is None:
                return None
            if args:
                return (_scaled(args[0], f), *args[1:]), kwargs
            kwargs[GATED_NORM_Y] = _scaled(kwargs[GATED_NORM_Y], f)
            return args, kwargs

        return hook

    def _install_scan_swap(self, mixer: torch.nn.Module, scans: dict[str, list[SiteFactors]]) -> None:
        module_dict, (scan_name, step_name, fused_name) = scan_functions(mixer, self.plan.arch.family)
        make = self._mamba2_wrappers if self.plan.arch.family == "mamba2" else self._mamba1_wrappers

        def replacements(current: dict[str, Any]) -> dict[str, Any]:
            # wrap what the module holds when the call starts: another steerer's wrappers compose
            scan, step = make(current[scan_name], current[step_name], scans)
            fused = {fused_name: returns_none} if fused_name else {}  # the fused path cannot be steered
            return {scan_name: scan, step_name: step, **fused}

        self.handles.extend(swap_during_calls(mixer, module_dict, replacements))

    def _mamba1_wrappers(self, scan_fn, step_fn, scans):
        delta, b_site, c_site = (scans.get(r, []) for r in S.SCAN_INPUT_REACHES)
        gated = scans.get(S.SCAN_GATED_OUTPUT, [])

        def scale_inputs(dt, B, C, kwargs, bias_key, softplus_key, to_layout):
            f = self.factor(delta)
            if f is not None:
                dt = _steered_dt(dt, to_layout(f), kwargs.get(bias_key), kwargs.get(softplus_key, False))
            f = self.factor(b_site)
            if f is not None:
                B = _scaled(B, to_layout(f))
            f = self.factor(c_site)
            if f is not None:
                C = _scaled(C, to_layout(f))
            return dt, B, C

        def scale_output(out, to_layout):
            # the scan returns y·SiLU(z) (D skip included): ssm_out and gate both scale that product
            f = self.factor(gated)
            return out if f is None else _scaled(out, to_layout(f))

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

    def _mamba2_wrappers(self, scan_fn, step_fn, scans):
        delta, b_site, c_site = (scans.get(r, []) for r in S.SCAN_INPUT_REACHES)
        output = scans.get(S.SCAN_OUTPUT, [])
        groups, d_state = self.plan.arch.n_groups, self.plan.arch.d_state
        heads = self.plan.arch.n_heads

        def scale_bc(B, C, per_group):
            f = self.factor(b_site)
            if f is not None:
                B = _scaled(B, per_group(f))
            f = self.factor(c_site)
            if f is not None:
                C = _scaled(C, per_group(f))
            return B, C

        def scan(x, dt, A, B, C, *args, **kwargs):  # x: (b, l, h, p); dt: (b, l, h); B, C: (b, l, g, n)
            f = self.factor(delta)
            if f is not None:
                limit = tuple(kwargs.get("dt_limit", _NO_LIMIT))
                # the factors' range matters only under a limit (read once per plan, see factor_range)
                bounds = None if limit == _NO_LIMIT else _factor_bounds(self.plan, delta)
                kernel_limit = _kernel_limit(limit, None if f.requires_grad else bounds)
                dt = _steered_dt(
                    dt, f, kwargs.get("dt_bias"), kwargs.get("dt_softplus", False), limit, kernel_limit
                )
                if limit != _NO_LIMIT:
                    kwargs["dt_limit"] = kernel_limit
            B, C = scale_bc(B, C, lambda f: f.unflatten(-1, (groups, d_state)))
            result = scan_fn(x, dt, A, B, C, *args, **kwargs)
            f = self.factor(output)
            if f is None:
                return result
            y = result[0] if isinstance(result, tuple) else result  # (b, l, h, p); the state stays as it is
            y = _scaled(y, f.unflatten(-1, (heads, -1)))
            return (y, *result[1:]) if isinstance(result, tuple) else y

        def step(state, x, dt, A, B, C, *args, **kwargs):  # x, dt: (b, h, p); B, C: (b, g, n)
            f = self.factor(delta)
            if f is not None:
                softplus = kwargs.get("dt_softplus", False)
                dt = _steered_head_dt(dt, _one_step(f), kwargs.get("dt_bias"), softplus)
            B, C = scale_bc(B, C, lambda f: _one_step(f).unflatten(-1, (groups, d_state)))
            y = step_fn(state, x, dt, A, B, C, *args, **kwargs)  # (b, h, p)
            f = self.factor(output)
            return y if f is None else _scaled(y, _one_step(f).unflatten(-1, (heads, -1)))

        return scan, step


_NO_LIMIT = (0.0, float("inf"))


def _factor_bounds(plan: SteeringPlan, group: list[SiteFactors]) -> tuple[float, float] | None:
    """The smallest and largest factor ``_Steerer.factor`` can give for ``group`` (1 at pads and in the
    other phase); None when a factor requires grad."""
    low = high = 1.0
    for by_positions in group:
        bounds = plan.factor_range(by_positions)
        if bounds is None:
            return None
        low, high = low * bounds[0], high * bounds[1]
    return low, high


def _kernel_limit(limit: tuple[float, float], bounds: tuple[float, float] | None) -> tuple[float, float]:
    """The Δ limit to leave to the scan when its Δ is steered: the model's own limit widened just enough
    for the steered Δ (clamped, then scaled by factors within ``bounds``) to pass. Where the scale widens
    nothing (a scale of 1.0; amplifying under a limit with no upper bound) the scan clamps the unsteered Δ
    itself, so those stay bit for bit. ``bounds`` None (factors that require grad): no limit; the steered
    dt carries the clamp."""
    if limit == _NO_LIMIT or bounds is None:
        return _NO_LIMIT
    return (limit[0] * bounds[0], limit[1] * bounds[1])


def _input_length(args: tuple, kwargs: dict[str, Any]) -> int:
    """The number of tokens a backbone forward gets (input_ids or inputs_embeds, by keyword or first)."""
    for name in ("input_ids", "inputs_embeds"):
        if kwargs.get(name) is not None:
            return kwargs[name].shape[1]
    return args[0].shape[1]


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
    kernel_limit: tuple[float, float] = _NO_LIMIT,
) -> torch.Tensor:
    """The Δ input dt for which the scan's own Δ = clamp(softplus(dt + bias)) comes out times f (fp32,
    broadcast to dt's layout), when the scan clamps to ``kernel_limit`` instead of the model's ``limit``.

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
    if limited:  # unsteered entries that the scan's (wider) limit would not clamp as the model does
        if kernel_limit[0] != limit[0]:
            changed = changed | (value < limit[0])
        if kernel_limit[1] != limit[1]:
            changed = changed | (value > limit[1])
    return torch.where(changed, steered, dt)


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plan_for(model: torch.nn.Module, spec: SteeringSpec | SteeringPlan | str | dict) -> SteeringPlan:
    """The plan of ``spec`` for ``model``, built once per (model, spec, device) and reused."""
    if isinstance(spec, SteeringPlan):
        return spec
    from lm_eval_ssmsteer.spec import load_spec

    spec = load_spec(spec)
    device = next(model.parameters()).device
    cache = _PLANS.setdefault(model, {})
    key = (spec.sha256, str(device))
    if key not in cache:
        cache[key] = SteeringPlan.build(model, spec)
    return cache[key]


@contextmanager
def steer(
    model: torch.nn.Module, spec: SteeringSpec | SteeringPlan | str | dict | None
) -> Iterator[SteeringSpec | None]:
    """Steer ``model`` inside the block (a spec, a preset name, JSON, or a plan built for this model);
    ``None`` is a no-op that installs nothing."""
    if spec is None:
        yield None
        return
    plan = plan_for(model, spec)
    steerer = _Steerer(model, plan)
    try:
        steerer.install()
        yield plan.spec
    finally:
        steerer.remove()


def install_factors(model: torch.nn.Module, factors: dict[tuple[int, str], torch.Tensor]):
    """``steer_factors`` without a block: the hooks stay on ``model`` until the returned function is called
    (a planted damage that lives as long as the model, ``studies.damping.plant``)."""
    steerer = _Steerer(model, SteeringPlan.from_factors(model, factors))
    steerer.install()
    return steerer.remove


@contextmanager
def steer_factors(model: torch.nn.Module, factors: dict[tuple[int, str], torch.Tensor]) -> Iterator[None]:
    """Multiply each (layer, site) by its factor at every non-pad position, inside the block.

    A factor is (width,), or (batch, 1, width) for one factor per sequence of the batch. The factors are
    used as given (not copied), so a factor that requires grad receives the gradient of whatever is
    computed from the steered forward pass.
    """
    steerer = _Steerer(model, SteeringPlan.from_factors(model, factors))
    try:
        steerer.install()
        yield
    finally:
        steerer.remove()
