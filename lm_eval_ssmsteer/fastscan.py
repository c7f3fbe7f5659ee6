"""A faster torch selective scan for Mamba-1 without the mamba-ssm kernels (CPU training and evaluation).

transformers' torch fallback runs the recurrence h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t as a Python loop
whose every step is an autograd node: training a 2M-parameter model on a 2-core CPU ran at about 32
tokens/s, 1,300 with this module. Here the scan is one autograd Function with a hand-written backward
(a reverse loop over positions with no graph) that works one position at a time on cache-sized
(batch, channels, state) tensors.
Same mathematics as `transformers.models.mamba.modeling_mamba.mamba_selective_scan`'s recurrent path;
tests/test_fastscan.py compares values and gradients.

`use_fast_scan()` swaps it into the Mamba-1 and Stable-Mamba modeling modules for a `with` block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


class _SelectiveScanCore(torch.autograd.Function):
    """y_t = C_t · h_t, h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t, one position at a time on cache-sized tensors.

    u, Δ (b, l, d); A (d, n); B, C (b, l, n) -> y (b, l, d) and the last state (b, d, n). The states are
    stored for the backward pass; exp(Δ_t A) is recomputed there.
    """

    @staticmethod
    def forward(ctx, u, dt, A, B, C):
        b, length, d = u.shape
        n = A.shape[1]
        keep = any(ctx.needs_input_grad)  # inference keeps only the running state
        states = u.new_empty(b, length, d, n) if keep else None
        du = dt * u
        y = u.new_empty(b, length, d)
        h = u.new_zeros(b, d, n)
        for t in range(length):
            if t:
                h = torch.exp(dt[:, t, :, None] * A).mul_(h)
            h.addcmul_(du[:, t, :, None], B[:, t, None, :])
            if keep:
                states[:, t] = h
            torch.sum(h * C[:, t, None, :], dim=-1, out=y[:, t])
        if keep:
            ctx.save_for_backward(u, dt, A, B, C, states)
        return y, h

    @staticmethod
    def backward(ctx, grad_y, grad_last):
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
    """Drop-in for transformers' `mamba_selective_scan` (kernel layout: u, Δ, z (b, d, l); B, C (b, n, l))."""
    input_dtype = hidden_states.dtype
    u = hidden_states.float()
    dt = dt.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[..., None]
    if delta_softplus:
        dt = F.softplus(dt)
    y, last = _SelectiveScanCore.apply(
        u.transpose(1, 2).contiguous(),
        dt.transpose(1, 2).contiguous(),
        A.float().contiguous(),
        B.float().transpose(1, 2).contiguous(),
        C.float().transpose(1, 2).contiguous(),
    )
    y = y.transpose(1, 2)
    if D is not None:
        y = y + u * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(input_dtype)
    if return_last_state:
        return y, last
    return y


MODULES = (
    "transformers.models.mamba.modeling_mamba",
    "transformers.models.falcon_mamba.modeling_falcon_mamba",
)


@contextmanager
def use_fast_scan(modules: tuple[str, ...] = MODULES) -> Iterator[None]:
    """Within the block, transformers' Mamba-1 / FalconMamba torch path runs `selective_scan`.

    Only for the torch path: where mamba-ssm is installed, `mamba_selective_scan` is its CUDA kernel,
    which this would replace (the backend refuses `fast_scan` off the CPU).
    """
    import importlib

    dicts = [vars(importlib.import_module(name)) for name in modules]
    saved = [d["mamba_selective_scan"] for d in dicts]
    for d in dicts:
        d["mamba_selective_scan"] = selective_scan
    try:
        yield
    finally:
        for d, fn in zip(dicts, saved, strict=True):
            d["mamba_selective_scan"] = fn
