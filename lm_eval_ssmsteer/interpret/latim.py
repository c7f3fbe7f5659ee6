"""LaTIM: the exact decomposition of a mixer output into per-source-token contributions, its scores
and their rollout across layers.

Holding Δ, B, C, z, σ(c) (and for Mamba-2 the gated-norm denominator) at their realised values, the
mixer is linear in the conv inputs u_j, and

    o_i = Σ_{j≤i} T_i(x_j) + bias_i
    T_i(x_j) = W_out (g_i ⊙ Σ_{m=j}^{min(i, j+K-1)} (α_{i,m} + [m=i] D) ⊙ σ(c_m) ⊙ w_{m-j} ⊙ u_j)
    bias_i   = W_out (g_i ⊙ Σ_{m≤i} (α_{i,m} + [m=i] D) ⊙ σ(c_m) ⊙ conv_b) + out_proj.bias

with α the per-channel hidden attention, w_ℓ the conv tap at lag ℓ (HF index K-1-ℓ), and g_i the linear
gate (SiLU(z_i); Mamba-2: norm.weight ⊙ SiLU(z_i) / rms_i). Mamba-2 decomposes the x path; its B and C
(also conv outputs) are held fixed like Δ.

Scores per layer (rows: target i, columns: source j, each row sums to 1 where it is non-zero):
    l2:   ‖T_i(x_j)‖₂ / Σ_j' ‖T_i(x_j')‖₂
    alti: max(0, ‖o_i‖₁ − ‖o_i − T_i(x_j)‖₁), renormalised over j
With the block's residual r_i added (block output h_i = r_i + o_i, r_i counted as token i's own
contribution), the same scores give the per-block maps that :func:`rollout` chains across layers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lm_eval_ssmsteer.interpret.attention import (
    DEFAULT_MEMORY_BYTES,
    channel_attention_rows,
    diagonal_skip,
    row_chunks,
)
from lm_eval_ssmsteer.mamba.mixer_math import MixerInternals, linear_gate

METHODS = ("l2", "alti")


def contribution_rows(internals: MixerInternals, rows: range) -> tuple[torch.Tensor, torch.Tensor]:
    """T_i(x_j) for i in rows, j < rows.stop: (r, rows.stop, d_model); and bias_i: (r, d_model)."""
    m_end = rows.stop
    K = internals.conv_weight.shape[1]
    w = internals.conv_weight  # (d, K), w[:, K-1-lag] is the tap at lag `lag`
    weight_on_v = channel_attention_rows(internals, rows)  # α (r, m_end, d), turned in place into:
    targets = torch.arange(rows.start, rows.stop, device=weight_on_v.device)
    weight_on_v[targets - rows.start, targets] += diagonal_skip(internals)  # the D skip reads v_i itself
    weight_on_v.mul_(torch.sigmoid(internals.conv_pre[0, None, :m_end]))  # (α + [m=i] D) ⊙ σ(c_m)
    # weight on u_j: token j reaches v_{j+lag} through the tap w_lag; summed over the taps in place
    through_conv = weight_on_v * w[:, K - 1]  # (r, j < m_end, d)
    for lag in range(1, min(K, m_end)):
        through_conv[:, : m_end - lag].addcmul_(weight_on_v[:, lag:], w[:, K - 1 - lag])
    gate = linear_gate(internals)[0, rows.start : rows.stop, None, :]  # (r, 1, d)
    through_conv.mul_(internals.u[0, None, :m_end]).mul_(gate)
    T = through_conv @ internals.out_weight.T  # (r, m_end, d_model)
    bias = (weight_on_v.sum(1) * internals.conv_bias * gate[:, 0]) @ internals.out_weight.T  # (r, d_model)
    if internals.out_bias is not None:
        bias = bias + internals.out_bias
    return T, bias


def _row_cost(internals: MixerInternals) -> int:
    return internals.length * (4 * internals.v.shape[-1] + 2 * internals.out_weight.shape[0]) * 4


def iter_contributions(
    internals: MixerInternals, memory_bytes: int = DEFAULT_MEMORY_BYTES
) -> Iterator[tuple[range, torch.Tensor, torch.Tensor]]:
    """(rows, T, bias) chunk by chunk over all target positions, within the memory budget."""
    for rows in row_chunks(internals.length, _row_cost(internals), memory_bytes):
        T, bias = contribution_rows(internals, rows)
        yield rows, T, bias


def _normalise_rows(scores: torch.Tensor) -> torch.Tensor:
    total = scores.sum(-1, keepdim=True)
    return torch.where(total > 0, scores / total.clamp_min(torch.finfo(scores.dtype).tiny), scores)


def score_rows(T: torch.Tensor, output: torch.Tensor, method: str) -> torch.Tensor:
    """Row-normalised scores (r, j) from contributions T (r, j, d_model) and outputs o_i (r, d_model)."""
    if method == "l2":
        return _normalise_rows(T.norm(dim=-1))
    if method == "alti":
        # float64: ‖o‖₁ − ‖o − T‖₁ cancels for small contributions, which fp32 would turn into noise
        T, output = T.double(), output.double()
        l1 = output.abs().sum(-1, keepdim=True)  # (r, 1)
        return _normalise_rows((l1 - (output[:, None] - T).abs().sum(-1)).clamp_min(0)).float()
    raise ValueError(f"LaTIM score {method!r} is not one of {', '.join(METHODS)}")


def latim_maps(
    internals: MixerInternals,
    methods: tuple[str, ...] = METHODS,
    block_input: torch.Tensor | None = None,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> dict[str, torch.Tensor]:
    """Token-to-token maps (l, l) of one layer: {method: mixer map}, plus {method + "_block": map of the
    block output r_i + o_i} when the block's input r (1, l, d_model) is given."""
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise ValueError(f"LaTIM scores {unknown or list(methods)} are not among {', '.join(METHODS)}")
    length = internals.length
    maps = {}
    for rows, T, bias in iter_contributions(internals, memory_bytes):
        output = T.sum(1) + bias  # (r, d_model): equals the real mixer output
        variants = [("", T, output)]
        if block_input is not None:
            r = block_input[0, rows.start : rows.stop]  # (r, d_model)
            T_block = T.clone()
            targets = torch.arange(rows.start, rows.stop, device=T.device)
            T_block[targets - rows.start, targets] += r
            variants.append(("_block", T_block, output + r))
        for suffix, contributions, out in variants:
            for method in methods:
                key = method + suffix
                maps.setdefault(key, internals.v.new_zeros(length, length))
                maps[key][rows.start : rows.stop, : rows.stop] = score_rows(contributions, out, method)
    return maps


def latim_rows(
    internals: MixerInternals,
    rows: range,
    methods: tuple[str, ...] = METHODS,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> dict[str, torch.Tensor]:
    """The rows ``rows`` of the mixer maps of :func:`latim_maps`, without computing the others:
    {method: (len(rows), rows.stop)}. Costs about len(rows)/l of the full maps: a few answer rows of a
    long input are cheap."""
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise ValueError(f"LaTIM scores {unknown or list(methods)} are not among {', '.join(METHODS)}")
    if not 0 <= rows.start < rows.stop <= internals.length or rows.step != 1:
        raise ValueError(
            f"rows {rows.start}-{rows.stop - 1} are out of range: the input has {internals.length} tokens "
            f"(0-{internals.length - 1})"
        )
    maps = {method: internals.v.new_zeros(len(rows), rows.stop) for method in methods}
    for chunk in row_chunks(len(rows), _row_cost(internals), memory_bytes):
        sub = range(rows.start + chunk.start, rows.start + chunk.stop)
        T, bias = contribution_rows(internals, sub)
        output = T.sum(1) + bias
        for method in methods:
            maps[method][chunk.start : chunk.stop, : sub.stop] = score_rows(T, output, method)
    return maps


def rollout(block_maps: list[torch.Tensor]) -> torch.Tensor:
    """Chain per-block maps (first layer first): R = M_L ⋯ M_1, R[i, j] = share of input token j in the
    last block's output at position i. Use the "_block" maps, which count the residual."""
    result = torch.eye(block_maps[0].shape[0], dtype=block_maps[0].dtype, device=block_maps[0].device)
    for block_map in block_maps:
        result = block_map @ result
    return result
