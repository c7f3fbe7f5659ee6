"""A faster torch selective scan for Mamba-1 without the mamba-ssm kernels (CPU training and evaluation).

transformers' torch fallback runs the recurrence h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t as a Python loop
whose every step is an autograd node: training a 2M-parameter model on a 2-core CPU ran at about 32
tokens/s, 1,300 with this module. Here the scan is one autograd Function with a hand-written backward
(a reverse loop over positions with no graph) that works one position at a time on cache-sized
(batch, channels, state) tensors.
Same mathematics as `transformers.models.mamba.modeling_mamba.mamba_selective_scan`'s recurrent path;
tests/test_fastscan.py compares values and gradients.

`use_fast_scan()` swaps it into every Mamba-1-family modeling module for a `with` block;
`fast_scan_refusal(model)` is the one rule for where that may happen.
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


def fast_scan_refusal(model: torch.nn.Module) -> str | None:
    """The one rule for where the fast scan may run: a Mamba-1-family model on the CPU, where the
    scan is transformers' torch reference. None when it may; else why not, in a sentence."""
    from lm_eval_ssmsteer.mamba.arch import describe_model

    return fast_scan_refusal_for(describe_model(model).architecture, next(model.parameters()).device.type)


def fast_scan_refusal_for(model_type: str, device: str) -> str | None:
    """``fast_scan_refusal`` for a model not built yet: its model type and device ("cpu", "cuda", ...)."""
    from lm_eval_ssmsteer.mamba.arch import ARCHITECTURES

    if ARCHITECTURES[model_type].family != "mamba1":
        allowed = ", ".join(mt for mt, a in ARCHITECTURES.items() if a.family == "mamba1")
        return f"the fast scan applies to model types {allowed}; this model is {model_type}"
    if not device.startswith("cpu"):
        return f"the fast scan is for the CPU torch path; on {device} it would replace the kernels"
    return None


@contextmanager
def use_fast_scan() -> Iterator[None]:
    """Within the block, every Mamba-1-family modeling module (transformers' Mamba and FalconMamba,
    Stable-Mamba, any registered one) runs ``selective_scan`` instead of ``mamba_selective_scan``.

    Only for the torch path: where mamba-ssm is installed, ``mamba_selective_scan`` is its CUDA kernel,
    which this would replace; ``fast_scan_refusal`` says where it may run.
    """
    import importlib
    from contextlib import ExitStack

    from lm_eval_ssmsteer.mamba.arch import ARCHITECTURES
    from lm_eval_ssmsteer.mamba.patch import swapped

    with ExitStack() as stack:
        for arch in ARCHITECTURES.values():
            if arch.family == "mamba1":
                module = vars(importlib.import_module(arch.modeling_module))
                stack.enter_context(swapped(module, {"mamba_selective_scan": selective_scan}))
        yield


def fast_scan_if_allowed(model: torch.nn.Module):
    """``use_fast_scan()`` where ``fast_scan_refusal`` allows it, else a block that changes nothing."""
    from contextlib import nullcontext

    return use_fast_scan() if fast_scan_refusal(model) is None else nullcontext()
