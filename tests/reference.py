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
    A = -torch.exp(mixer.A_log.float())  # (d_inner, n)
    b, l, _ = x.shape
    state = torch.zeros(b, d_inner, n)
    ys = []
    for t in range(l):
        state = (
            torch.exp(delta[:, t, :, None] * A) * state
            + delta[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
        )
        ys.append((state * C[:, t, None, :]).sum(-1) + mixer.D * x[:, t])
    y = torch.stack(ys, dim=1)  # (b, l, d_inner)
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
