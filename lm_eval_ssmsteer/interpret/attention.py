"""Hidden attention (Ali, Zimerman & Wolf 2024): the scan written as causal attention on v = SiLU(conv).

    y_i = Σ_{m≤i} α_{i,m} ⊙ v_m + D ⊙ v_i
    Mamba-1, per channel e:  α_{i,m}[e] = Σ_n C_i[n] · exp(A[e,n] (S_i[e] − S_m[e])) · Δ_m[e] · B_m[n]
    Mamba-2, per head h:     α_{i,m}[h] = (C_i · B_m)_{group of h} · exp(A_h (S_i[h] − S_m[h])) · Δ_m[h]
    with S_t = Σ_{k≤t} Δ_k.

Rows (target positions) are computed a chunk at a time so that memory stays bounded for long inputs.
Everything works on one sequence: internals with batch size 1 (see ``MixerInternals.select``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lm_eval_ssmsteer.mamba.arch import MAMBA1
from lm_eval_ssmsteer.mamba.mixer_math import MixerInternals

AGGREGATES = ("mean", "norm", "none")
DEFAULT_MEMORY_BYTES = 512 * 2**20
MAX_RESULT_BUDGETS = 8  # a full per-feature result may take this many chunk budgets


def _single(internals: MixerInternals) -> None:
    if internals.v.shape[0] != 1:
        raise ValueError(
            f"interpretation works on one sequence, got a batch of {internals.v.shape[0]}: "
            "use internals.select(i)"
        )


def _decay_exponent(S: torch.Tensor, rows: range, first_source: int = 0) -> torch.Tensor:
    """S_i − S_m for i in rows, first_source ≤ m < rows.stop; +inf where m > i (so exp(A·(S_i − S_m)) = 0).

    S (l, f) cumulative Δ in float64, subtracted before rounding to fp32 so that long inputs keep
    the precision of each difference; returns (r, rows.stop − first_source, f) fp32.
    """
    diff = (S[rows.start : rows.stop, None, :] - S[None, first_source : rows.stop, :]).float()
    i = torch.arange(rows.start, rows.stop, device=S.device)[:, None]
    m = torch.arange(first_source, rows.stop, device=S.device)[None, :]
    return diff.masked_fill((m > i)[..., None], float("inf"))


def _cumulative_delta(internals: MixerInternals) -> torch.Tensor:
    return torch.cumsum(internals.delta[0].double(), dim=0)  # (l, d) Mamba-1 | (l, H) Mamba-2


def head_attention_rows(internals: MixerInternals, rows: range) -> torch.Tensor:
    """Mamba-2 per-head hidden attention α[i, m, h] for i in rows, m < rows.stop: (r, rows.stop, H)."""
    _single(internals)
    if internals.kind == MAMBA1:
        raise ValueError("per-head hidden attention is for Mamba-2; Mamba-1 has per-channel attention")
    m_end = rows.stop
    H = internals.delta.shape[-1]
    heads_per_group = H // internals.B.shape[2]
    B = internals.B[0, :m_end].repeat_interleave(heads_per_group, dim=1)  # (m_end, H, N)
    C = internals.C[0, rows.start : m_end].repeat_interleave(heads_per_group, dim=1)  # (r, H, N)
    CB = torch.einsum("ihn,mhn->imh", C, B)  # (r, m_end, H)
    decay = torch.exp(internals.A * _decay_exponent(_cumulative_delta(internals), rows))  # (r, m_end, H)
    return CB * decay * internals.delta[0, None, :m_end]


def channel_attention_rows(internals: MixerInternals, rows: range) -> torch.Tensor:
    """Per-channel hidden attention α[i, m, e] for i in rows, m < rows.stop: (r, rows.stop, d).

    Mamba-2 heads are expanded to their head_dim channels.
    """
    _single(internals)
    if internals.kind != MAMBA1:
        return head_attention_rows(internals, rows).repeat_interleave(internals.head_dim, dim=-1)
    t0, m_end = rows.start, rows.stop
    S = _cumulative_delta(internals)  # (l, d)
    A, delta = internals.A, internals.delta[0]  # (d, N), (l, d)
    B, C = internals.B[0], internals.C[0]  # (l, N) each
    alpha = internals.v.new_zeros(len(rows), m_end, A.shape[0])  # (r, m_end, d)
    if t0 > 0:
        # Sources before the chunk: split the decay at t0 so that both factors are exp(≤ 0), and sum
        # over n as a batched matmul: α[i, m] = Σ_n (C_i[n] e^{A(S_i − S_t0)}) (e^{A(S_t0 − S_m)} Δ_m B_m[n]).
        P = C[t0:m_end, None, :] * torch.exp(A * (S[t0:m_end] - S[t0]).float()[..., None])  # (r, d, N)
        Q = torch.exp(A * (S[t0] - S[:t0]).float()[..., None]) * (delta[:t0, :, None] * B[:t0, None, :])
        alpha[:, :t0] = torch.einsum("ren,men->rme", P, Q)  # Q: (t0, d, N)
    exponent = _decay_exponent(S, rows, first_source=t0)  # (r, r, d): sources inside the chunk
    for n in range(A.shape[1]):
        C_i = C[t0:m_end, n][:, None, None]  # (r, 1, 1)
        B_m = B[t0:m_end, n][None, :, None]  # (1, r, 1)
        alpha[:, t0:] += C_i * torch.exp(A[:, n] * exponent) * delta[t0:m_end] * B_m
    return alpha


def row_chunks(length: int, cost_per_row: int, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> Iterator[range]:
    """Consecutive target-row ranges covering 0..length-1, each within the memory budget.

    cost_per_row: bytes one row of the largest per-chunk tensor takes at full length.
    """
    size = max(1, memory_bytes // max(1, cost_per_row))
    for start in range(0, length, size):
        yield range(start, min(start + size, length))


def hidden_attention(
    internals: MixerInternals, aggregate: str = "mean", memory_bytes: int = DEFAULT_MEMORY_BYTES
) -> torch.Tensor:
    """Hidden attention of one mixer call.

    aggregate: "mean" -> (l, l) mean of α over channels (Mamba-2: over heads, the same thing);
    "norm" -> (l, l) ‖α_{i,j} ⊙ v_j‖₂ over channels, the size of token j's scan contribution to i;
    "none" -> (d, l, l) per channel for Mamba-1, (H, l, l) per head for Mamba-2.
    """
    _single(internals)
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate {aggregate!r} is not one of {', '.join(AGGREGATES)}")
    length, d = internals.length, internals.v.shape[-1]
    if aggregate == "none":
        features = d if internals.kind == MAMBA1 else internals.delta.shape[-1]
        size = features * length * length * 4
        if size > MAX_RESULT_BUDGETS * memory_bytes:
            raise ValueError(
                f"per-feature hidden attention of {length} tokens x {features} features needs "
                f"{size / 2**30:.1f} GiB (limit {MAX_RESULT_BUDGETS} x the {memory_bytes / 2**20:.0f} MiB "
                "budget): use aggregate 'mean' or 'norm', or a shorter input"
            )
    if aggregate == "none" and internals.kind != MAMBA1:
        H = internals.delta.shape[-1]
        result = internals.v.new_zeros(H, length, length)
        for rows in row_chunks(length, length * H * 4 * 4, memory_bytes):
            alpha = head_attention_rows(internals, rows)  # (r, m_end, H)
            result[:, rows.start : rows.stop, : rows.stop] = alpha.permute(2, 0, 1)
        return result
    shape = (d, length, length) if aggregate == "none" else (length, length)
    result = internals.v.new_zeros(shape)
    for rows in row_chunks(length, length * d * 4 * 4, memory_bytes):
        alpha = channel_attention_rows(internals, rows)  # (r, m_end, d)
        if aggregate == "mean":
            result[rows.start : rows.stop, : rows.stop] = alpha.mean(-1)
        elif aggregate == "norm":
            contribution = alpha * internals.v[0, None, : rows.stop]
            result[rows.start : rows.stop, : rows.stop] = contribution.norm(dim=-1)
        else:
            result[:, rows.start : rows.stop, : rows.stop] = alpha.permute(2, 0, 1)
    return result


def scan_from_attention(internals: MixerInternals, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> torch.Tensor:
    """y_i = Σ_m α_{i,m} ⊙ v_m + D ⊙ v_i rebuilt from the hidden attention: (l, d), equals internals.y[0]."""
    _single(internals)
    length, d = internals.length, internals.v.shape[-1]
    v = internals.v[0]
    y = diagonal_skip(internals) * v
    for rows in row_chunks(length, length * d * 4 * 4, memory_bytes):
        alpha = channel_attention_rows(internals, rows)
        y[rows.start : rows.stop] += torch.einsum("imd,md->id", alpha, v[: rows.stop])
    return y


def diagonal_skip(internals: MixerInternals) -> torch.Tensor:
    """D per channel (d,): Mamba-2's per-head D expanded to its channels."""
    if internals.kind == MAMBA1:
        return internals.D
    return internals.D.repeat_interleave(internals.head_dim)
