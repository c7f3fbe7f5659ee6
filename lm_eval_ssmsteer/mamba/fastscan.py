"""Faster torch scans for Mamba-1 and Mamba-2 without the mamba-ssm kernels (CPU training and evaluation).

Mamba-1: transformers' torch fallback runs the recurrence h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t as a Python
loop whose every step is an autograd node: training a 2M-parameter model on a 2-core CPU ran at about 32
tokens/s, 1,300 with this module. Here the scan is one autograd Function with a hand-written backward
(the adjoint recurrence, with no graph). Its blocked form (`_blocked_scan`, `_blocked_backward`) lays the
state out (batch, state, channels), so a position is one fused multiply-add over contiguous channels, and
forms the exponentials, inputs and outputs of a block of positions at once: evaluation 1.4 to 2.3 times
faster on one core than a loop of one position at a time on (batch, channels, state) tensors
(`benchmarks/cpu_scan.py`). Training keeps that loop where it is the faster (BLOCKED_TRAINING_UP_TO).
Same mathematics as `transformers.models.mamba.modeling_mamba.mamba_selective_scan`'s recurrent path;
tests/test_fastscan.py compares values and gradients.

Mamba-2: `chunk_scan` computes what transformers' torch `mamba2_chunk_scan` computes (the chunked state
space duality form) with matrix products over the chunk positions and a loop over chunks for the states
between them. transformers up to 5.24 forms the same contractions as broadcast products summed afterwards,
which made ref-mamba2's CPU forward 11 times slower on 5.17 than on 5.25 (docs/results/cpu_forward.md).
tests/test_fastscan.py compares values, final states and gradients with transformers' function, and whole
models of every Mamba-2-family architecture.

`use_fast_scan()` swaps both into every modeling module of their family for a `with` block;
`fast_scan_refusal(model)` is the one rule for where that may happen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

LOG2_E = math.log2(math.e)
BLOCK_ELEMENTS = 2**18  # a block's decays (1 MiB of float32): they and the states stay in a core's cache


def _block_length(b: int, n: int, d: int) -> int:
    """How many positions the Mamba-1 scan forms in one operation each: a power of two from 4 to 32 whose
    (b, T, n, d) block fits BLOCK_ELEMENTS (measured: 8 at ref-mamba1's width and batch 4, 4 at batch 8)."""
    fits = max(1, BLOCK_ELEMENTS // (b * n * d))
    return min(32, max(4, 1 << (fits.bit_length() - 1)))


def _decays(dt: torch.Tensor, rates: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """exp(Δ_t A) for positions start..end-1, (b, T, n, d); ``rates`` is A log2(e), (n, d): 2^x is twice as
    fast as e^x on the CPU."""
    return torch.exp2(dt[:, start:end, None, :] * rates)


# training takes the blocked scan and backward up to this many batch rows x channels, the loop above it: at
# ref-mamba1's width (448) the blocked pair is faster for one sequence and as fast for 4 (and faster inside
# find's gradient passes), slower for 32; at the 130m width (1,536) slower even for one
# (benchmarks/cpu_scan.py; docs/results/cpu_forward.md)
BLOCKED_TRAINING_UP_TO = 2048


def _blocked_scan(u, dt, A, B, C, keep: bool):
    """y_t = C_t · h_t, h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t with the state laid out (b, n, d): each
    position is one fused multiply-add over d contiguous channels, written over that position's input in
    place; the decays and inputs of a block of positions (`_block_length`) are formed in one operation
    each (which torch spreads over its threads), and the block's outputs are one batched matrix product.
    Returns y (b, l, d), the last state (b, d, n) and, with ``keep``, every state (b, l, n, d) for the
    backward pass."""
    b, length, d = u.shape
    block = _block_length(b, A.shape[1], d)
    rates = (A * LOG2_E).t().contiguous()
    y = u.new_empty(b, length, d)
    h = u.new_zeros(b, A.shape[1], d)
    kept = u.new_empty(b, length, A.shape[1], d) if keep else None
    for start in range(0, length, block):
        end = min(length, start + block)
        inputs = (B[:, start:end, :, None], (dt[:, start:end] * u[:, start:end])[:, :, None, :])
        states = torch.mul(*inputs, out=kept[:, start:end]) if kept is not None else torch.mul(*inputs)
        for state, decay in zip(states.unbind(1), _decays(dt, rates, start, end).unbind(1), strict=True):
            h = state.addcmul_(decay, h)
        y[:, start:end] = torch.matmul(C[:, start:end, None, :], states).squeeze(2)
    return y, h.transpose(1, 2).contiguous(), kept


def _blocked_backward(u, dt, A, B, C, states, grad_y, grad_last):
    """The gradients of `_blocked_scan` from its kept states (b, l, n, d): the adjoint recurrence
    g_t = C_t y'_t + exp(Δ_{t+1} A) g_{t+1}, one fused multiply-add a position, by blocks as the forward
    runs; each block's gradients of u, Δ, A, B and C from its g's as batched products."""
    b, length, d = u.shape
    block = _block_length(b, A.shape[1], d)
    rates, decay_rates = (A * LOG2_E).t().contiguous(), A.t().contiguous()
    du = dt * u
    grad_du, grad_dt = torch.empty_like(u), torch.zeros_like(dt)
    grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
    grad_rates = torch.zeros_like(decay_rates)
    # dL/dh at the position after the current one (the last state's own gradient at the end)
    g = u.new_zeros(b, A.shape[1], d) if grad_last is None else grad_last.transpose(1, 2).contiguous()
    for start in reversed(range(0, length, block)):
        end = min(length, start + block)
        decays = _decays(dt, rates, start, min(length, end + 1))  # one more: it carries g back
        gy = grad_y[:, start:end]
        grads = C[:, start:end, :, None] * gy[:, :, None, :]  # (b, T, n, d): C_t y'_t, then dL/dh_t
        for i in reversed(range(end - start)):
            last = start + i + 1 == length  # the last state: its gradient has no decay to pass through
            g = grads[:, i].add_(g) if last else grads[:, i].addcmul_(decays[:, i + 1], g)
        grad_C[:, start:end] = torch.matmul(states[:, start:end], gy[..., None]).squeeze(-1)
        grad_du[:, start:end] = torch.matmul(B[:, start:end, None, :], grads).squeeze(2)
        grad_B[:, start:end] = torch.matmul(grads, du[:, start:end, :, None]).squeeze(-1)
        first = max(start, 1)  # dL/d(Δ_t A) = g_t h_{t-1} exp(Δ_t A), from t = 1
        if first < end:
            steps = slice(first - start, end - start)
            through = grads[:, steps] * states[:, first - 1 : end - 1] * decays[:, steps]
            grad_dt[:, first:end] = (through * decay_rates).sum(2)
            grad_rates += (through * dt[:, first:end, None, :]).sum((0, 1))
    grad_dt.addcmul_(grad_du, u)
    return grad_du * dt, grad_dt, grad_rates.t(), grad_B, grad_C


class _SelectiveScanCore(torch.autograd.Function):
    """y_t = C_t · h_t, h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t: u, Δ (b, l, d); A (d, n); B, C (b, l, n) ->
    y (b, l, d) and the last state (b, d, n). Without a gradient wanted, `_blocked_scan` keeping nothing.
    With one, up to BLOCKED_TRAINING_UP_TO batch rows x channels `_blocked_scan` keeps its states for
    `_blocked_backward`; above it, a loop of one position at a time on cache-sized (b, d, n) tensors keeps
    them, and the backward is its reverse loop (exp(Δ_t A) recomputed there).
    """

    @staticmethod
    def forward(ctx, u, dt, A, B, C):
        b, length, d = u.shape
        wanted = any(ctx.needs_input_grad)
        ctx.blocked = not wanted or b * d <= BLOCKED_TRAINING_UP_TO
        if ctx.blocked:
            y, last, states = _blocked_scan(u, dt, A, B, C, keep=wanted)
            if wanted:
                ctx.save_for_backward(u, dt, A, B, C, states)
            return y, last
        n = A.shape[1]
        states = u.new_empty(b, length, d, n)
        du = dt * u
        y = u.new_empty(b, length, d)
        h = u.new_zeros(b, d, n)
        for t in range(length):
            if t:
                h = torch.exp(dt[:, t, :, None] * A).mul_(h)
            h.addcmul_(du[:, t, :, None], B[:, t, None, :])
            states[:, t] = h
            torch.sum(h * C[:, t, None, :], dim=-1, out=y[:, t])
        ctx.save_for_backward(u, dt, A, B, C, states)
        return y, h

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        if ctx.blocked:
            return _blocked_backward(*ctx.saved_tensors, grad_y, grad_last)
        u, dt, A, B, C, states = ctx.saved_tensors
        b, length, d = u.shape
        du = dt * u
        grad_du = torch.empty_like(u)
        grad_B = torch.empty_like(B)
        grad_C = torch.empty_like(C)
        grad_dt = torch.zeros_like(dt)
        grad_A = torch.zeros_like(A)
        g = grad_last.clone() if grad_last is not None else u.new_zeros(b, d, A.shape[1])
        for t in range(length - 1, -1, -1):
            g.addcmul_(grad_y[:, t, :, None], C[:, t, None, :])
            h_t = states[:, t]
            torch.sum(grad_y[:, t, :, None] * h_t, dim=1, out=grad_C[:, t])
            torch.sum(g * B[:, t, None, :], dim=-1, out=grad_du[:, t])
            torch.sum(du[:, t, :, None] * g, dim=1, out=grad_B[:, t])
            if t:
                a_t = torch.exp(dt[:, t, :, None] * A)
                g.mul_(a_t)  # now dL/dh_{t-1} from this step, and (times h_{t-1}) dL/d(Δ_t A)
                decay = g * states[:, t - 1]
                torch.sum(decay * A, dim=-1, out=grad_dt[:, t])
                grad_A.add_((decay * dt[:, t, :, None]).sum(0))
        grad_dt.addcmul_(grad_du, u)
        grad_u = grad_du * dt
        return grad_u, grad_dt, grad_A, grad_B, grad_C


def selective_scan(
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    **_: object,
):
    """Drop-in for transformers' `mamba_selective_scan` (kernel layout: u, Δ, z (b, d, l); B, C (b, n, l)).
    Every elementwise step runs on (b, l, d) rows, contiguous: Δ's bias added as it is transposed, its
    softplus, D and the gate after the scan; y is returned as a (b, d, l) view of those rows, so the
    transpose transformers applies before `out_proj` is contiguous again (no copy there)."""
    input_dtype = hidden_states.dtype
    u = hidden_states.float().transpose(1, 2).contiguous()
    y, last = _SelectiveScanCore.apply(
        u,
        _time_steps(dt.float(), delta_bias, delta_softplus),
        A.float().contiguous(),
        B.float().transpose(1, 2).contiguous(),
        C.float().transpose(1, 2).contiguous(),
    )
    if D is not None:
        y = torch.addcmul(y, u, D.float())
    if z is not None:
        y = y * F.silu(z.float().transpose(1, 2))
    y = y.to(input_dtype).transpose(1, 2)
    if return_last_state:
        return y, last
    return y


def _time_steps(dt: torch.Tensor, bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    """softplus(Δ + bias) as contiguous (b, l, d) rows from Δ (b, d, l); without a gradient wanted, the
    transpose and the bias are one pass over Δ, the softplus another."""
    rows = dt.transpose(1, 2)
    if torch.is_grad_enabled() and (dt.requires_grad or (bias is not None and bias.requires_grad)):
        rows = (rows + bias.float() if bias is not None else rows).contiguous()
        return F.softplus(rows) if softplus else rows
    out = torch.empty(rows.shape, dtype=rows.dtype, device=rows.device)
    if bias is not None:
        torch.add(rows, bias.float(), out=out)
    else:
        out.copy_(rows)
    return F.softplus(out) if softplus else out


def _segment_sums(a: torch.Tensor) -> torch.Tensor:
    """(..., q) -> (..., q, q): entry [i, j] is a_{j+1} + ... + a_i for j <= i, -inf above the diagonal.

    Summed from the masked increments rather than as a difference of two running sums, so that a long
    chunk's large cumulative decay does not cancel away the precision of a short segment."""
    q = a.shape[-1]
    strictly_below = torch.ones(q, q, dtype=torch.bool, device=a.device).tril(-1)
    increments = a[..., :, None].expand(*a.shape, q).masked_fill(~strictly_below, 0.0)  # [k, j]: a_k, k > j
    sums = increments.cumsum(dim=-2)
    on_or_below = torch.ones(q, q, dtype=torch.bool, device=a.device).tril()
    return sums.masked_fill(~on_or_below, -torch.inf)


def chunk_scan(
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
    z: torch.Tensor | None = None,
    **_: object,
):
    """Drop-in for transformers' `mamba2_chunk_scan`: x (b, l, h, p), Δ (b, l, h), A (h,), B and C
    (b, l, g, n) -> y (b, l, h, p) in fp32, and with `return_final_states` the state after the last
    position (b, h, p, n). y_t = Σ_{s<=t} C_t·B_s exp(Σ_{s<k<=t} Δ_k A) Δ_s x_s (+ D x_t), from
    `initial_states` if given.
    `z` (which transformers' mixers pass as None) gates y by SiLU(z), as mamba-ssm's kernel does."""
    batch, length, heads, head_dim = hidden_states.shape
    groups, state_size = B.shape[2], B.shape[3]
    per_group = heads // groups  # heads h = (g, r): head h reads group h // per_group, as in transformers
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1]).float()
    x = hidden_states.float()
    a = A.float() * dt  # (b, l, h): the log decay of each position
    q = chunk_size
    pad = -length % q
    chunks = (length + pad) // q

    def in_chunks(t: torch.Tensor) -> torch.Tensor:  # (b, l, ...) -> (b, c, q, ...), zeros after the end
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(batch, chunks, q, *t.shape[2:])

    xdt = in_chunks(x * dt[..., None]).reshape(batch, chunks, q, groups, per_group, head_dim)
    Bc, Cc = in_chunks(B.float()), in_chunks(C.float())  # (b, c, q, g, n)
    ac = in_chunks(a).permute(0, 1, 3, 2).reshape(batch, chunks, groups, per_group, q)
    running = ac.cumsum(dim=-1)  # log decay from the chunk's start to each position, inclusive

    # within a chunk: y_i = Σ_{j<=i} (C_i·B_j) exp(a_{j+1} + ... + a_i) Δ_j x_j; C_i·B_j once per group
    scores = torch.einsum("bcign,bcjgn->bcgij", Cc, Bc)
    weights = scores[:, :, :, None] * torch.exp(_segment_sums(ac))  # (b, c, g, r, i, j)
    y = torch.einsum("bcgrij,bcjgrp->bcigrp", weights, xdt)

    # each chunk's contribution to the state at its end, then the states at the chunk starts in order
    to_end = torch.exp(running[..., -1:] - running)  # (b, c, g, r, q)
    added = torch.einsum("bcjgn,bcjgrp->bcgrpn", Bc, xdt * to_end.permute(0, 1, 4, 2, 3)[..., None])
    chunk_decay = torch.exp(running[..., -1])  # (b, c, g, r)
    state_shape = (batch, groups, per_group, head_dim, state_size)
    state = (
        initial_states.to(dtype=torch.float32, device=x.device).reshape(state_shape)
        if initial_states is not None
        else x.new_zeros(state_shape)
    )
    starts = []
    for c in range(chunks):
        starts.append(state)
        state = state * chunk_decay[:, c, :, :, None, None] + added[:, c]
    start_states = torch.stack(starts, dim=1)  # (b, c, g, r, p, n)
    # from the chunk's start state: y_i += exp(a_1 + ... + a_i) C_i · state
    from_start = torch.einsum("bcign,bcgrpn->bcigrp", Cc, start_states)
    y = y + from_start * torch.exp(running).permute(0, 1, 4, 2, 3)[..., None]

    y = y.reshape(batch, chunks * q, heads, head_dim)[:, :length]
    state = state.reshape(batch, heads, head_dim, state_size)
    if D is not None:
        y = y + x * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    if return_final_states:
        return y, state
    return y


def fast_scan_refusal(model: torch.nn.Module) -> str | None:
    """The one rule for where the fast scans may run: a Mamba-family model (transformers' Mamba, Mamba2 and
    FalconMamba, Stable-Mamba, the hybrids' Mamba layers) on the CPU, where the scan is transformers' torch
    reference. None when it may; else why not, in a sentence."""
    from lm_eval_ssmsteer.mamba.arch import describe_model

    return fast_scan_refusal_for(describe_model(model).architecture, next(model.parameters()).device.type)


def fast_scan_refusal_for(model_type: str, device: str) -> str | None:
    """``fast_scan_refusal`` for a model not built yet: its model type and device ("cpu", "cuda", ...)."""
    from lm_eval_ssmsteer.mamba.arch import ARCHITECTURES

    if model_type not in ARCHITECTURES:
        return f"the fast scans apply to model types {', '.join(ARCHITECTURES)}; this model is {model_type}"
    if not device.startswith("cpu"):
        return f"the fast scan is for the CPU torch path; on {device} it would replace the kernels"
    return None


# the name of each mixer family's fast scan in this module, read when a block starts (a test may wrap it); it
# takes the place of the family's prefill scan, named in compat.SCAN_FUNCTIONS
_FAST_SCANS = {"mamba1": "selective_scan", "mamba2": "chunk_scan"}


@contextmanager
def use_fast_scan() -> Iterator[None]:
    """Within the block, every Mamba-family modeling module runs the fast scan of its mixer family:
    ``selective_scan`` instead of ``mamba_selective_scan`` (transformers' Mamba and FalconMamba,
    Stable-Mamba, Jamba, any registered Mamba-1 module), ``chunk_scan`` instead of ``mamba2_chunk_scan``
    (Mamba2 and the Mamba-2 hybrids). Decoding one token at a time keeps transformers' step functions.

    Only for the torch path: where mamba-ssm is installed, the replaced names are its CUDA kernels;
    ``fast_scan_refusal`` says where it may run.
    """
    import importlib
    from contextlib import ExitStack

    from lm_eval_ssmsteer.mamba.arch import ARCHITECTURES
    from lm_eval_ssmsteer.mamba.compat import SCAN_FUNCTIONS
    from lm_eval_ssmsteer.mamba.patch import swapped

    with ExitStack() as stack:
        for arch in ARCHITECTURES.values():
            module = vars(importlib.import_module(arch.modeling_module))
            prefill = SCAN_FUNCTIONS[arch.family][0]
            stack.enter_context(swapped(module, {prefill: globals()[_FAST_SCANS[arch.family]]}))
        yield


def fast_scan_if_allowed(model: torch.nn.Module):
    """``use_fast_scan()`` where ``fast_scan_refusal`` allows it, else a block that changes nothing."""
    from contextlib import nullcontext

    return use_fast_scan() if fast_scan_refusal(model) is None else nullcontext()
