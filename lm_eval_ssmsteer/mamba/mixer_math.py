"""The one explicit implementation of the Mamba mixer math (fp32), which hidden attention, LaTIM and
knockout all build on.

Given a transformers mixer (``MambaMixer``, ``FalconMambaMixer``, ``Mamba2Mixer`` or the Mamba mixer of a
hybrid) and the hidden states it receives (the normed block input), :func:`mixer_internals` recomputes
every intermediate
(u, z, conv pre-activation, v = SiLU(conv), Δ, B, C, A, D, y, gated, output) with each line mapping to
an equation. Notation, per position t (HF parameter names):

Mamba-1 / FalconMamba (channels e of d_in, state n of N):
    [u; z] = in_proj(x)
    c_t = conv_b + Σ_{ℓ=0}^{K-1} w_ℓ ⊙ u_{t-ℓ}    (w_ℓ = conv1d.weight[:, 0, K-1-ℓ]: taps oldest first)
    v_t = SiLU(c_t)
    [r; B_t; C_t] = x_proj(v_t);  Δ_t = softplus(dt_proj.weight @ r + dt_proj.bias)
        (FalconMamba: weightless RMS norms on r, B_t, C_t before use)
    h_t = exp(Δ_t ⊗ A) ⊙ h_{t-1} + (Δ_t ⊙ v_t) ⊗ B_t,    A = -exp(A_log)   (d_in, N)
    y_t = h_t · C_t + D ⊙ v_t
    output_t = out_proj(y_t ⊙ SiLU(z_t))

Mamba-2 (heads h, head_dim p, groups g of B/C shared by H/G heads):
    [z; xBC; dt] = in_proj(x);  [v; B; C] = SiLU(conv(xBC))   (u, c, v below are the x part only)
    Δ_t[h] = clamp(softplus(dt_t[h] + dt_bias[h]), time_step_limit),  A_h = -exp(A_log[h])
    h_t[h] = exp(Δ_t[h] A_h) h_{t-1}[h] + Δ_t[h] v_t[h] ⊗ B_t[g(h)]
    y_t[h] = h_t[h] · C_t[g(h)] + D_h v_t[h]
    gated_t = y_t ⊙ SiLU(z_t);  rms_t[group] = sqrt(mean(gated_t[group]²) + eps)
    output_t = out_proj(norm.weight ⊙ gated_t / rms_t)

The hybrids' mixers are these two with a few additions (``NORM_KINDS``):
    Jamba (Mamba-1): r, B_t, C_t pass through RMS norms with weights (dt_layernorm, b_layernorm, c_layernorm)
    Falcon-H1 (Mamba-2): x·ssm_in_multiplier enters in_proj, whose output is multiplied by the µP vector
        (one multiplier each for z, x, B, C, dt); the gated norm is optional (mamba_rms_norm): without it
        output_t = out_proj(y_t ⊙ SiLU(z_t)); with mamba_norm_before_gate it normalises y_t, then gates
    Bamba, Granite 4.0-H, Nemotron-H, Zamba2: Mamba-2 as above (the norm's groups: compat)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lm_eval_ssmsteer.mamba.arch import MAMBA1, family_of_mixer
from lm_eval_ssmsteer.mamba.compat import gated_norm_group_size

# How a Mamba-2 mixer reads y out: "gated" normalises y ⊙ SiLU(z) (Mamba-2 and most hybrids), "none" has
# no norm (Falcon-H1 without mamba_rms_norm), "norm_then_gate" normalises y, then multiplies SiLU(z)
# (Falcon-H1 with mamba_norm_before_gate). Mamba-1 mixers have no norm ("none").
NORM_KINDS = ("gated", "none", "norm_then_gate")


def norm_kind(mixer: nn.Module) -> str:
    if family_of_mixer(mixer) == MAMBA1 or not getattr(mixer, "mamba_rms_norm", True):
        return "none"
    return "norm_then_gate" if getattr(mixer.norm, "norm_before_gate", False) else "gated"


@dataclass
class MixerInternals:
    """Every intermediate of one mixer call, fp32, batch first. d = d_in (intermediate size).

    Shapes (b batch, l length, d channels, N state, H heads, G groups, m d_model, K conv taps):
      u, z, conv_pre, v, y, gated: (b, l, d)      x path only for Mamba-2 (B/C conv channels omitted)
      delta: (b, l, d) Mamba-1 | (b, l, H) Mamba-2
      A: (d, N) Mamba-1 | (H,) Mamba-2;  D: (d,) | (H,)
      B, C: (b, l, N) Mamba-1 | (b, l, G, N) Mamba-2
      rms: (b, l, groups of the gated norm), Mamba-2 only
      output: (b, l, m)
      conv_weight: (d, K) taps in HF order (index K-1 multiplies the current token); conv_bias: (d,)
      out_weight: (m, d); out_bias: (m,) or None; norm_weight: (d,) Mamba-2 only
    """

    kind: str
    u: torch.Tensor
    z: torch.Tensor
    conv_pre: torch.Tensor
    v: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    y: torch.Tensor
    conv_weight: torch.Tensor
    conv_bias: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor | None
    gated: torch.Tensor | None = None  # set by mixer_internals through readout()
    output: torch.Tensor | None = None
    rms: torch.Tensor | None = None
    norm_weight: torch.Tensor | None = None
    norm_group_size: int | None = None
    norm_eps: float = 0.0
    head_dim: int = 1
    norm_kind: str = "none"  # one of NORM_KINDS

    @property
    def length(self) -> int:
        return self.v.shape[1]

    def select(self, batch_index: int) -> MixerInternals:
        """The internals of one sequence of the batch (batch dimension kept, size 1)."""
        i = slice(batch_index, batch_index + 1)
        per_sequence = ("u", "z", "conv_pre", "v", "delta", "B", "C", "y", "gated", "output", "rms")
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in per_sequence:
            if fields[name] is not None:
                fields[name] = fields[name][i]
        return MixerInternals(**fields)


def _mask_padding(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    # HF zeroes the x branch at pad positions before in_proj and after the conv (exact left padding).
    return x if attention_mask is None else x * attention_mask[:, :, None].to(x.dtype)


def causal_conv(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """c_t = bias + Σ_ℓ w_ℓ ⊙ u_{t-ℓ}, w_ℓ = weight[:, K-1-ℓ]; u (b, l, d), weight (d, K) -> (b, l, d)."""
    K = weight.shape[1]
    c = bias.expand_as(u).clone()
    for lag in range(K):
        shifted = F.pad(u, (0, 0, lag, 0))[:, : u.shape[1]]  # u_{t-lag}, zero before the start
        c = c + weight[:, K - 1 - lag] * shifted
    return c


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMS norm over the last dimension (FalconMamba's B, C and Δ norms)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def mamba1_scan(
    v: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor
) -> torch.Tensor:
    """Selective scan: h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t v_t B_t; y_t = h_t·C_t + D v_t.

    v, delta (b, l, d); A (d, N); B, C (b, l, N); D (d,) -> y (b, l, d).
    """
    b, length, d = v.shape
    h = v.new_zeros(b, d, A.shape[1])  # (b, d, N)
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * A)  # (b, d, N)
        h = decay * h + (delta[:, t] * v[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))  # (b, d)
    return torch.stack(ys, dim=1) + D * v


def mamba2_scan(
    v: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor
) -> torch.Tensor:
    """Per-head scalar-decay scan: h_t = exp(Δ_t A) h_{t-1} + Δ_t v_t ⊗ B_t; y_t = h_t·C_t + D v_t.

    v (b, l, H, p); delta (b, l, H); A, D (H,); B, C (b, l, G, N) -> y (b, l, H, p).
    """
    b, length, H, p = v.shape
    heads_per_group = H // B.shape[2]
    B = B.repeat_interleave(heads_per_group, dim=2)  # (b, l, H, N)
    C = C.repeat_interleave(heads_per_group, dim=2)
    h = v.new_zeros(b, H, p, B.shape[-1])  # (b, H, p, N)
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, t] * A)[:, :, None, None]  # (b, H, 1, 1)
        h = decay * h + (delta[:, t, :, None] * v[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((h * C[:, t, :, None, :]).sum(-1))  # (b, H, p)
    return torch.stack(ys, dim=1) + D[:, None] * v


def readout(
    internals: MixerInternals, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """From a scan output y (b, l, d) to (gated, output, rms); the Mamba-2 norm is recomputed from y."""
    gated = y * F.silu(internals.z)  # (b, l, d)
    rms = None
    normed = gated
    if internals.norm_kind != "none":
        normalised = gated if internals.norm_kind == "gated" else y
        b, length, d = gated.shape
        groups = normalised.view(b, length, d // internals.norm_group_size, internals.norm_group_size)
        rms = torch.sqrt(groups.pow(2).mean(-1) + internals.norm_eps)  # (b, l, groups)
        # norm_then_gate: weight ⊙ (y / rms) ⊙ SiLU(z) = weight ⊙ gated / rms, rms taken over y
        normed = internals.norm_weight * gated / rms.repeat_interleave(internals.norm_group_size, dim=-1)
    output = normed @ internals.out_weight.T
    if internals.out_bias is not None:
        output = output + internals.out_bias
    return gated, output, rms


def linear_gate(internals: MixerInternals) -> torch.Tensor:
    """g (b, l, d) with output_t = out_proj(g_t ⊙ y_t) at the realised gate and (Mamba-2) norm denominator."""
    gate = F.silu(internals.z)
    if internals.norm_kind != "none":
        rms = internals.rms.repeat_interleave(internals.norm_group_size, dim=-1)
        gate = internals.norm_weight * gate / rms
    return gate


def _f32(p: torch.Tensor | None) -> torch.Tensor | None:
    return None if p is None else p.detach().float()


@torch.no_grad()
def mixer_internals(
    mixer: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> MixerInternals:
    """Recompute one mixer call in fp32 from its input hidden states (b, l, d_model)."""
    kind = family_of_mixer(mixer)
    x = _mask_padding(hidden_states.detach().float(), attention_mask)
    x = x * getattr(mixer, "ssm_in_multiplier", 1.0)  # Falcon-H1
    projected = x @ _f32(mixer.in_proj.weight).T  # (b, l, in_proj width)
    if mixer.in_proj.bias is not None:
        projected = projected + _f32(mixer.in_proj.bias)
    if getattr(mixer, "mup_vector", None) is not None:  # Falcon-H1: one µP multiplier per [z, x, B, C, dt]
        projected = projected * _f32(mixer.mup_vector)
    conv_w = _f32(mixer.conv1d.weight)[:, 0, :]  # (conv channels, K)
    conv_b = _f32(mixer.conv1d.bias) if mixer.conv1d.bias is not None else conv_w.new_zeros(conv_w.shape[0])
    out_w, out_b = _f32(mixer.out_proj.weight), _f32(mixer.out_proj.bias)
    A = -torch.exp(_f32(mixer.A_log))
    D = _f32(mixer.D)
    d = mixer.intermediate_size
    if kind == MAMBA1:
        u, z = projected[..., :d], projected[..., d:]  # (b, l, d) each
        conv_pre = causal_conv(u, conv_w, conv_b)
        v = _mask_padding(F.silu(conv_pre), attention_mask)
        rank, N = mixer.time_step_rank, mixer.ssm_state_size
        r, B, C = torch.split(v @ _f32(mixer.x_proj.weight).T, [rank, N, N], dim=-1)
        if hasattr(mixer, "dt_layernorm"):  # Jamba: RMS norms with weights
            r, B, C = mixer.dt_layernorm(r), mixer.b_layernorm(B), mixer.c_layernorm(C)
        elif hasattr(mixer, "b_layernorm"):  # FalconMamba
            r, B, C = rms_norm(r, mixer.rms_eps), rms_norm(B, mixer.rms_eps), rms_norm(C, mixer.rms_eps)
        delta = F.softplus(r @ _f32(mixer.dt_proj.weight).T + _f32(mixer.dt_proj.bias))  # (b, l, d)
        y = mamba1_scan(v, delta, A, B, C, D)
        internals = MixerInternals(
            kind, u, z, conv_pre, v, delta, A, B, C, D, y, conv_w, conv_b, out_w, out_b
        )
    else:
        H, p, G, N = mixer.num_heads, mixer.head_dim, mixer.n_groups, mixer.ssm_state_size
        z, xBC, dt = torch.split(projected, [d, mixer.conv_dim, H], dim=-1)
        xBC_pre = causal_conv(xBC, conv_w, conv_b)  # the conv acts on [x, B, C]
        v, B, C = torch.split(_mask_padding(F.silu(xBC_pre), attention_mask), [d, G * N, G * N], dim=-1)
        b, length = v.shape[:2]
        B, C = B.reshape(b, length, G, N), C.reshape(b, length, G, N)
        lo, hi = mixer.time_step_limit
        delta = torch.clamp(F.softplus(dt + _f32(mixer.dt_bias)), min=lo, max=hi)  # (b, l, H)
        y = mamba2_scan(v.reshape(b, length, H, p), delta, A, B, C, D).reshape(b, length, d)
        internals = MixerInternals(
            kind,
            xBC[..., :d],
            z,
            xBC_pre[..., :d],
            v,
            delta,
            A,
            B,
            C,
            D,
            y,
            conv_w[:d],
            conv_b[:d],
            out_w,
            out_b,
            head_dim=p,
            norm_kind=norm_kind(mixer),
        )
        if internals.norm_kind != "none":
            internals.norm_weight = _f32(mixer.norm.weight)
            internals.norm_group_size = gated_norm_group_size(mixer.norm, d)
            internals.norm_eps = float(mixer.norm.variance_epsilon)
    internals.gated, internals.output, internals.rms = readout(internals, y)
    return internals
