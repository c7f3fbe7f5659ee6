"""An independent, plain-loop reference of a whole Mamba-family model with steering, for tests.

Written from the equations, not from transformers' code or the package's hooks: a sequential
selective scan per token, explicit depthwise causal conv, and a multiplicative factor applied at
each site where ``scales[(layer, site)]`` says, at the positions ``where[b, t]`` marks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _factor(scales, layer, site, width, where):
    """(b, l, width) factor: the site's channel vector at marked positions, 1 elsewhere."""
    vec = scales.get((layer, site))
    if vec is None:
        return None
    b, l = where.shape
    out = torch.ones(b, l, width)
    out[where] = vec
    return out


def _causal_conv(x, weight, bias):
    """x: (b, l, c); weight: (c, 1, K) depthwise; out_t = bias + sum_k w[K-1-k] x_{t-k}."""
    b, l, c = x.shape
    K = weight.shape[-1]
    out = torch.zeros_like(x) + (bias if bias is not None else 0)
    for k in range(K):
        shifted = torch.zeros_like(x)
        shifted[:, k:] = x[:, : l - k]
        out = out + shifted * weight[:, 0, K - 1 - k]
    return out


def _rms(x, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _scan1(x, delta, A, B, C, D):
    """Mamba-1 scan, one position at a time: x, delta (b, l, d); A (d, n); B, C (b, l, n) -> y (b, l, d)."""
    b, l, d = x.shape
    state = torch.zeros(b, d, A.shape[1])
    ys = []
    for t in range(l):
        state = (
            torch.exp(delta[:, t, :, None] * A) * state
            + delta[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
        )
        ys.append((state * C[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, dim=1)


def mamba1_mixer(mixer, h, keep, scales, layer, where, falcon=False):
    """h: (b, l, d_model) normed block input; keep: (b, l) 1 at real tokens, 0 at pads."""
    d_inner, n = mixer.intermediate_size, mixer.ssm_state_size
    h = h * keep[..., None]
    xz = h @ mixer.in_proj.weight.T
    x, z = xz[..., :d_inner], xz[..., d_inner:]
    x = F.silu(_causal_conv(x, mixer.conv1d.weight, mixer.conv1d.bias)) * keep[..., None]
    dbc = x @ mixer.x_proj.weight.T
    r = mixer.time_step_rank
    dt_r, B, C = dbc[..., :r], dbc[..., r : r + n], dbc[..., r + n :]
    if falcon:
        dt_r, B, C = _rms(dt_r, mixer.rms_eps), _rms(B, mixer.rms_eps), _rms(C, mixer.rms_eps)
    delta = F.softplus(dt_r @ mixer.dt_proj.weight.T + mixer.dt_proj.bias)  # (b, l, d_inner)
    for site, t, w in (("delta", "delta", d_inner), ("B", "B", n), ("C", "C", n)):
        f = _factor(scales, layer, site, w, where)
        if f is not None:
            if t == "delta":
                delta = delta * f
            elif t == "B":
                B = B * f
            else:
                C = C * f
    y = _scan1(x, delta, -torch.exp(mixer.A_log.float()), B, C, mixer.D)  # (b, l, d_inner)
    f = _factor(scales, layer, "ssm_out", d_inner, where)
    if f is not None:
        y = y * f
    g = F.silu(z)
    f = _factor(scales, layer, "gate", d_inner, where)
    if f is not None:
        g = g * f
    out = (y * g) @ mixer.out_proj.weight.T
    if mixer.out_proj.bias is not None:
        out = out + mixer.out_proj.bias
    return out


def mamba2_mixer(mixer, h, keep, scales, layer, where):
    d_inner, n, nh, p, g = (
        mixer.intermediate_size,
        mixer.ssm_state_size,
        mixer.num_heads,
        mixer.head_dim,
        mixer.n_groups,
    )
    h = h * keep[..., None]
    proj = h @ mixer.in_proj.weight.T
    z, xbc, dt = proj[..., :d_inner], proj[..., d_inner : d_inner + mixer.conv_dim], proj[..., -nh:]
    xbc = F.silu(_causal_conv(xbc, mixer.conv1d.weight, mixer.conv1d.bias)) * keep[..., None]
    x, B, C = xbc[..., :d_inner], xbc[..., d_inner : d_inner + g * n], xbc[..., d_inner + g * n :]
    delta = F.softplus(dt + mixer.dt_bias).clamp(*mixer.time_step_limit)  # (b, l, nh)
    for site, w in (("delta", nh), ("B", g * n), ("C", g * n)):
        f = _factor(scales, layer, site, w, where)
        if f is None:
            continue
        if site == "delta":
            delta = delta * f
        elif site == "B":
            B = B * f
        else:
            C = C * f
    b, l, _ = x.shape
    x = x.view(b, l, nh, p)
    B, C = B.view(b, l, g, n), C.view(b, l, g, n)
    A = -torch.exp(mixer.A_log.float())  # (nh,)
    heads_per_group = nh // g
    state = torch.zeros(b, nh, p, n)
    ys = []
    for t in range(l):
        y_t = torch.zeros(b, nh, p)
        new_state = torch.zeros_like(state)
        for hh in range(nh):
            gg = hh // heads_per_group
            dA = torch.exp(delta[:, t, hh] * A[hh])  # (b,)
            new_state[:, hh] = dA[:, None, None] * state[:, hh] + (
                delta[:, t, hh, None, None] * x[:, t, hh, :, None] * B[:, t, gg, None, :]
            )
            y_t[:, hh] = (new_state[:, hh] * C[:, t, gg, None, :]).sum(-1) + mixer.D[hh] * x[:, t, hh]
        state = new_state
        ys.append(y_t.reshape(b, d_inner))
    y = torch.stack(ys, dim=1)
    f = _factor(scales, layer, "ssm_out", d_inner, where)
    if f is not None:
        y = y * f
    gated = y * F.silu(z)
    f = _factor(scales, layer, "gate", d_inner, where)
    if f is not None:
        gated = gated * f
    out = mixer.norm(gated, None) @ mixer.out_proj.weight.T
    if mixer.out_proj.bias is not None:
        out = out + mixer.out_proj.bias
    return out


@torch.no_grad()
def reference_logits(model, ids, scales, where, keep=None):
    """Logits of the full model, computed token by token, with steering ``scales`` at ``where``.

    scales: {(layer, site): (width,) channel vector}; where: (b, l) bool; keep: (b, l) pad mask.
    """
    arch = model.config.model_type
    keep = torch.ones(ids.shape, dtype=torch.float32) if keep is None else keep.float()
    where = where & keep.bool()
    backbone = model.base_model
    hidden = backbone.embeddings(ids)
    d_model = hidden.shape[-1]
    for layer, block in enumerate(backbone.layers):
        normed = block.norm(hidden)
        if arch == "mamba2":
            out = mamba2_mixer(block.mixer, normed, keep, scales, layer, where)
        else:
            out = mamba1_mixer(block.mixer, normed, keep, scales, layer, where, falcon=arch == "falcon_mamba")
        f = _factor(scales, layer, "mixer_out", d_model, where)
        if f is not None:
            out = out * f
        hidden = hidden + out
        f = _factor(scales, layer, "residual", d_model, where)
        if f is not None:
            hidden = hidden * f
    return model.lm_head(backbone.norm_f(hidden))


# -- the Mamba mixers of hybrid models ----------------------------------------------------------
def _weighted_rms(x, norm):
    """A transformers RMSNorm module's equation, from its weight and eps: w ⊙ x / sqrt(mean(x²) + eps)."""
    return norm.weight * _rms(x, norm.variance_epsilon)


def _grouped_rms(x, weight, groups, eps):
    """RMS norm over each of ``groups`` equal slices of the last dimension, then times weight."""
    b, l, d = x.shape
    parts = x.view(b, l, groups, d // groups)
    return weight * _rms(parts, eps).view(b, l, d)


def _scan2(x, delta, A, B, C, D, nh, p, g, n):
    """Mamba-2 scan, one head at a time: x (b, l, nh·p), delta (b, l, nh), B, C (b, l, g·n) -> y."""
    b, l, _ = x.shape
    x = x.view(b, l, nh, p)
    B, C = B.view(b, l, g, n), C.view(b, l, g, n)
    per_group = nh // g
    state = torch.zeros(b, nh, p, n)
    ys = []
    for t in range(l):
        y_t = torch.zeros(b, nh, p)
        for hh in range(nh):
            gg = hh // per_group
            state[:, hh] = torch.exp(delta[:, t, hh] * A[hh])[:, None, None] * state[:, hh] + (
                delta[:, t, hh, None, None] * x[:, t, hh, :, None] * B[:, t, gg, None, :]
            )
            y_t[:, hh] = (state[:, hh] * C[:, t, gg, None, :]).sum(-1) + D[hh] * x[:, t, hh]
        ys.append(y_t.reshape(b, nh * p))
    return torch.stack(ys, dim=1)


def hybrid_mamba2_mixer(model, mixer, h, keep, factor):
    """A hybrid's Mamba-2 mixer (Bamba, Granite 4.0-H, Nemotron-H, Zamba2, Falcon-H1) from the equations.

    factor(site, width) -> (b, l, width) or None. Falcon-H1: x·ssm_in_multiplier enters in_proj, whose
    output is multiplied by the µP vector; its gated norm is optional and may normalise before gating.
    """
    cfg = model.config
    falcon = cfg.model_type == "falcon_h1"
    d, n, nh, p, g = (
        mixer.intermediate_size,
        mixer.ssm_state_size,
        mixer.num_heads,
        mixer.head_dim,
        mixer.n_groups,
    )
    x = h * keep[..., None]
    if falcon:
        x = x * cfg.ssm_in_multiplier
    proj = x @ mixer.in_proj.weight.T
    if mixer.in_proj.bias is not None:
        proj = proj + mixer.in_proj.bias
    if falcon:
        m = cfg.ssm_multipliers  # z, x, B, C, dt
        proj = proj * torch.cat(
            [torch.full((w,), float(k)) for w, k in zip((d, d, g * n, g * n, nh), m, strict=True)]
        )
    z, xbc, dt = proj[..., :d], proj[..., d : d + mixer.conv_dim], proj[..., d + mixer.conv_dim :]
    xbc = F.silu(_causal_conv(xbc, mixer.conv1d.weight, mixer.conv1d.bias)) * keep[..., None]
    xs, B, C = xbc[..., :d], xbc[..., d : d + g * n], xbc[..., d + g * n :]
    delta = F.softplus(dt + mixer.dt_bias).clamp(*mixer.time_step_limit)  # (b, l, nh)
    for site, width in (("delta", nh), ("B", g * n), ("C", g * n)):
        f = factor(site, width)
        if f is not None:
            delta, B, C = (
                delta * f if site == "delta" else delta,
                B * f if site == "B" else B,
                C * f if site == "C" else C,
            )
    y = _scan2(xs, delta, -torch.exp(mixer.A_log.float()), B, C, mixer.D, nh, p, g, n)
    f = factor("ssm_out", d)
    y = y if f is None else y * f
    gate = F.silu(z)
    f = factor("gate", d)
    gate = gate if f is None else gate * f
    if falcon and not cfg.mamba_rms_norm:
        out = y * gate
    elif falcon and cfg.mamba_norm_before_gate:
        out = _grouped_rms(y, mixer.norm.weight, g, mixer.norm.variance_epsilon) * gate
    else:
        # 5.17's Bamba and Granite norms take the whole width as one group; Falcon-H1's has n_groups
        norm = mixer.norm
        groups = d // norm.group_size if hasattr(norm, "group_size") else getattr(norm, "n_groups", 1)
        out = _grouped_rms(y * gate, mixer.norm.weight, groups, mixer.norm.variance_epsilon)
    out = out @ mixer.out_proj.weight.T
    return out if mixer.out_proj.bias is None else out + mixer.out_proj.bias


def jamba_mixer(mixer, h, keep, factor):
    """Jamba's Mamba-1 mixer: RMS norms (with weights) on Δ's low-rank input, on B and on C."""
    d, n, r = mixer.intermediate_size, mixer.ssm_state_size, mixer.time_step_rank
    h = h * keep[..., None]
    xz = h @ mixer.in_proj.weight.T
    x, z = xz[..., :d], xz[..., d:]
    x = F.silu(_causal_conv(x, mixer.conv1d.weight, mixer.conv1d.bias)) * keep[..., None]
    dbc = x @ mixer.x_proj.weight.T
    dt_r = _weighted_rms(dbc[..., :r], mixer.dt_layernorm)
    B = _weighted_rms(dbc[..., r : r + n], mixer.b_layernorm)
    C = _weighted_rms(dbc[..., r + n :], mixer.c_layernorm)
    delta = F.softplus(dt_r @ mixer.dt_proj.weight.T + mixer.dt_proj.bias)  # (b, l, d)
    for site, width in (("delta", d), ("B", n), ("C", n)):
        f = factor(site, width)
        if f is not None:
            delta, B, C = (
                delta * f if site == "delta" else delta,
                B * f if site == "B" else B,
                C * f if site == "C" else C,
            )
    y = _scan1(x, delta, -torch.exp(mixer.A_log.float()), B, C, mixer.D)
    f = factor("ssm_out", d)
    y = y if f is None else y * f
    gate = F.silu(z)
    f = factor("gate", d)
    gate = gate if f is None else gate * f
    out = (y * gate) @ mixer.out_proj.weight.T
    return out if mixer.out_proj.bias is None else out + mixer.out_proj.bias


@torch.no_grad()
def hybrid_reference_logits(model, ids, layer, mixer, scales, where):
    """Logits of a hybrid whose Mamba mixer at ``layer`` is replaced by the reference above (steered by
    ``scales`` {site: (width,) vector} at ``where`` (b, l) bool; ``residual`` scales the layer's output).
    Every other module runs as transformers wrote it; one forward, no cache."""

    def factor_at(keep):
        def factor(site, width):
            vec = scales.get(site)
            if vec is None:
                return None
            out = torch.ones(*where.shape, width)
            out[where & keep.bool()] = vec
            return out

        return factor

    def replace(module, args, kwargs, output):
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        mask = kwargs.get("attention_mask")
        keep = torch.ones(h.shape[:2]) if mask is None or mask.dim() != 2 else mask.float()
        factor = factor_at(keep)
        if model.config.model_type == "jamba":
            out = jamba_mixer(module, h.float(), keep, factor)
        else:
            out = hybrid_mamba2_mixer(model, module, h.float(), keep, factor)
        f = factor("mixer_out", out.shape[-1])
        return (out if f is None else out * f).to(output.dtype)

    def residual(module, args, output):
        f = factor_at(torch.ones(where.shape))("residual", model.config.hidden_size)
        if f is None:
            return output
        return (output[0] * f, *output[1:]) if isinstance(output, tuple) else output * f

    handles = [mixer.register_forward_hook(replace, with_kwargs=True)]
    handles.append(model.base_model.layers[layer].register_forward_hook(residual))
    try:
        return model(ids, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
