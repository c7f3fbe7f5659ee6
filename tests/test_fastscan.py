"""The CPU fast scan is transformers' Mamba-1 recurrence, in values and gradients."""

from __future__ import annotations

import torch
from transformers.models.mamba import modeling_mamba

from lm_eval_ssmsteer.mamba.fastscan import selective_scan, use_fast_scan
from tests.tiny import make_model


def _inputs(seed: int = 0, b: int = 2, d: int = 6, n: int = 4, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    u, dt, z = (torch.randn(b, d, length, generator=g) for _ in range(3))
    B, C = (torch.randn(b, n, length, generator=g) for _ in range(2))
    A = -torch.rand(d, n, generator=g) - 0.1
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    return u, dt, A, B, C, D, z, bias


def test_selective_scan_matches_transformers_values_state_and_grads():
    args = [t.clone().requires_grad_(True) for t in _inputs()]
    u, dt, A, B, C, D, z, bias = args
    kw = {"D": D, "z": z, "delta_bias": bias, "delta_softplus": True, "return_last_state": True}
    y, last = selective_scan(u, dt, A, B, C, **kw)
    ry, rlast = modeling_mamba.mamba_selective_scan(u, dt, A, B, C, **kw)
    torch.testing.assert_close(y, ry, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, rlast, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), args)
    ref = torch.autograd.grad((ry * w).sum(), args)
    for name, got, want in zip(["u", "dt", "A", "B", "C", "D", "z", "bias"], grads, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_use_fast_scan_gives_same_model_loss_and_restores():
    model = make_model("mamba")
    ids = torch.randint(3, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    original = modeling_mamba.mamba_selective_scan
    ref = model(ids, labels=ids).loss
    with use_fast_scan():
        assert modeling_mamba.mamba_selective_scan is selective_scan
        fast = model(ids, labels=ids).loss
    assert modeling_mamba.mamba_selective_scan is original
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
