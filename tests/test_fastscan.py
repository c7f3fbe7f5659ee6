"""The CPU fast scans are transformers' Mamba-1 recurrence and Mamba-2 chunked scan, in values and
gradients."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers.models.mamba import modeling_mamba

from lm_eval_ssmsteer.mamba import fastscan
from lm_eval_ssmsteer.mamba.fastscan import chunk_scan, fast_scan_refusal_for, selective_scan, use_fast_scan
from tests.steering_checks import greedy
from tests.tiny import make_model


def _inputs(seed: int = 0, b: int = 2, d: int = 6, n: int = 4, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    u, dt, z = (torch.randn(b, d, length, generator=g) for _ in range(3))
    B, C = (torch.randn(b, n, length, generator=g) for _ in range(2))
    A = -torch.rand(d, n, generator=g) - 0.1
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    return u, dt, A, B, C, D, z, bias


@pytest.mark.parametrize("path", ["blocked", "loop"])  # training's two forms (BLOCKED_TRAINING_UP_TO)
@pytest.mark.parametrize("length", [1, 9, 37])  # one position; part of a block; two blocks and a part
def test_selective_scan_matches_transformers_values_state_and_grads(length, path, monkeypatch):
    monkeypatch.setattr(fastscan, "BLOCKED_TRAINING_UP_TO", 10**9 if path == "blocked" else 0)
    args = [t.clone().requires_grad_(True) for t in _inputs(length=length)]
    u, dt, A, B, C, D, z, bias = args
    kw = {"D": D, "z": z, "delta_bias": bias, "delta_softplus": True, "return_last_state": True}
    y, last = selective_scan(u, dt, A, B, C, **kw)
    ry, rlast = modeling_mamba.mamba_selective_scan(u, dt, A, B, C, **kw)
    torch.testing.assert_close(y, ry, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, rlast, rtol=1e-5, atol=1e-5)
    w, w_last = torch.randn_like(y), torch.randn_like(last)  # the loss reads the outputs and the last state
    grads = torch.autograd.grad((y * w).sum() + (last * w_last).sum(), args)
    ref = torch.autograd.grad((ry * w).sum() + (rlast * w_last).sum(), args)
    for name, got, want in zip(["u", "dt", "A", "B", "C", "D", "z", "bias"], grads, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_training_takes_the_blocked_scan_up_to_its_size_and_the_loop_above(monkeypatch):
    """The two training forms are chosen by batch rows x channels; a spy on the blocked backward says which
    one ran (both give transformers' gradients: the test above)."""
    ran = []
    blocked_backward = fastscan._blocked_backward
    monkeypatch.setattr(fastscan, "_blocked_backward", lambda *a: ran.append(True) or blocked_backward(*a))
    for b, d, blocked in ((2, 1024, True), (3, 1024, False)):  # 2,048 rows x channels, then 3,072
        u, dt, A, B, C, *_ = (t.requires_grad_(True) for t in _inputs(b=b, d=d, length=5))
        ran.clear()
        selective_scan(u, dt, A, B, C).sum().backward()
        assert ran == ([True] if blocked else []), (b, d)


@pytest.mark.parametrize("length", [1, 32, 37])  # one position; one whole block (32 here); a block and a part
def test_selective_scan_without_a_graph_matches_transformers_values_and_state(length):
    """Evaluation takes the blocked scan keeping no states; it must be transformers' recurrence, and
    the training loop's outputs."""
    u, dt, A, B, C, D, z, bias = _inputs(seed=1, b=3, d=40, n=16, length=length)
    kw = {"D": D, "z": z, "delta_bias": bias, "delta_softplus": True, "return_last_state": True}
    with torch.no_grad():
        y, last = selective_scan(u, dt, A, B, C, **kw)
        ry, rlast = modeling_mamba.mamba_selective_scan(u, dt, A, B, C, **kw)
    torch.testing.assert_close(y, ry, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, rlast, rtol=1e-5, atol=1e-5)
    assert last.shape == (3, 40, 16) and last.is_contiguous()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastscan, "BLOCKED_TRAINING_UP_TO", 0)  # with a graph: the loop
        looped = selective_scan(u.requires_grad_(True), dt, A, B, C, **kw)[0]
    torch.testing.assert_close(looped.detach(), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("gated", [True, False])  # D and z given, or neither
def test_selective_scan_options_without_and_with_a_graph(bias, softplus, gated):
    """Every combination of Δ's bias and softplus, D and z, without a graph (Δ prepared in place on (b, l, d)
    rows) and with one wanted through the bias alone, against transformers; y comes back as a (b, d, l) view
    of contiguous rows, so transformers' transpose before out_proj needs no copy."""
    u, dt, A, B, C, D, z, delta_bias = _inputs(seed=2, b=2, d=12, n=4, length=11)
    kw = {
        "D": D if gated else None,
        "z": z if gated else None,
        "delta_bias": delta_bias if bias else None,
        "delta_softplus": softplus,
    }
    want = modeling_mamba.mamba_selective_scan(u, dt, A, B, C, **kw)
    with torch.no_grad():
        y = selective_scan(u, dt, A, B, C, **kw)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    assert y.shape == u.shape and y.transpose(1, 2).is_contiguous()
    if bias:
        leaf = delta_bias.clone().requires_grad_(True)
        graphed = selective_scan(u, dt, A, B, C, **(kw | {"delta_bias": leaf}))
        torch.testing.assert_close(graphed.detach(), want, rtol=1e-5, atol=1e-5)
        reference = modeling_mamba.mamba_selective_scan(u, dt, A, B, C, **(kw | {"delta_bias": leaf}))
        weights = torch.randn_like(want)
        (got,) = torch.autograd.grad((graphed * weights).sum(), leaf)
        (expected,) = torch.autograd.grad((reference * weights).sum(), leaf)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


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


def _chunk_inputs(length: int, b: int = 2, h: int = 4, p: int = 3, groups: int = 2, n: int = 5):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, length, h, p, generator=g)
    dt = torch.randn(b, length, h, generator=g)
    A = -torch.rand(h, generator=g) - 0.1
    B, C = (torch.randn(b, length, groups, n, generator=g) for _ in range(2))
    D, bias = torch.randn(h, generator=g), torch.randn(h, generator=g)
    initial = torch.randn(b, h, p, n, generator=g)
    return x, dt, A, B, C, D, bias, initial


@pytest.mark.parametrize(
    ("length", "with_initial", "dt_limit"),
    [
        (37, True, (0.0, float("inf"))),  # four chunks and a part of one, from a given state
        (32, False, (0.0, float("inf"))),  # whole chunks, from zero
        (5, True, (0.3, 0.9)),  # one part-chunk, Δ clamped
    ],
)
def test_chunk_scan_matches_transformers_values_final_state_and_grads(length, with_initial, dt_limit):
    from transformers.models.mamba2 import modeling_mamba2

    args = [t.clone().requires_grad_(True) for t in _chunk_inputs(length)]
    x, dt, A, B, C, D, bias, initial = args
    kw = {
        "chunk_size": 8,
        "D": D,
        "dt_bias": bias,
        "initial_states": initial if with_initial else None,
        "dt_softplus": True,
        "dt_limit": dt_limit,
        "return_final_states": True,
    }
    y, last = chunk_scan(x, dt, A, B, C, **kw)
    ry, rlast = modeling_mamba2.mamba2_chunk_scan(x, dt, A, B, C, **kw)
    assert y.shape == ry.shape == x.shape and y.dtype == ry.dtype
    torch.testing.assert_close(y, ry, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, rlast, rtol=1e-5, atol=1e-5)
    wy, wlast = torch.randn_like(y), torch.randn_like(last)
    grads = torch.autograd.grad((y * wy).sum() + (last * wlast).sum(), args, allow_unused=True)
    ref = torch.autograd.grad((ry * wy).sum() + (rlast * wlast).sum(), args, allow_unused=True)
    for name, got, want in zip(["x", "dt", "A", "B", "C", "D", "bias", "initial"], grads, ref, strict=True):
        if not with_initial and name == "initial":
            assert got is None and want is None
            continue
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5, msg=f"gradient of {name}")
    # without return_final_states, y alone, the same
    torch.testing.assert_close(chunk_scan(x, dt, A, B, C, **{**kw, "return_final_states": False}), y)


def test_chunk_scan_gates_by_z_as_the_kernel_does():
    x, dt, A, B, C, D, bias, _ = _chunk_inputs(11)
    z = torch.randn_like(x)
    ungated = chunk_scan(x, dt, A, B, C, chunk_size=4, D=D, dt_bias=bias, dt_softplus=True)
    gated = chunk_scan(x, dt, A, B, C, chunk_size=4, D=D, dt_bias=bias, dt_softplus=True, z=z)
    torch.testing.assert_close(gated, ungated * torch.nn.functional.silu(z))


MAMBA2_FAMILY = ("mamba2", "bamba", "granitemoehybrid", "falcon_h1", "nemotron_h", "zamba2")


@pytest.mark.parametrize("arch", MAMBA2_FAMILY)
@torch.no_grad()
def test_use_fast_scan_runs_mamba2_family_models_like_transformers_and_restores(arch):
    """Unsteered and steered at every Mamba layer's Δ (the steering wrapper then wraps the fast scan),
    the full forward and cached greedy decoding (a prefill that returns its final states, then
    transformers' own one-token steps) give transformers' logits; the names are put back."""
    import importlib

    from lm_eval_ssmsteer.mamba.arch import ARCHITECTURES
    from lm_eval_ssmsteer.spec import SteeringSpec
    from lm_eval_ssmsteer.steering import steer

    model = make_model(arch, seed=1)
    module = importlib.import_module(ARCHITECTURES[arch].modeling_module)
    original = module.mamba2_chunk_scan
    ids = torch.randint(3, 200, (2, 21), generator=torch.Generator().manual_seed(0))
    spec = SteeringSpec.single(layer="all", site="delta", scale=1.7)
    for context in (None, spec):
        with steer(model, context) if context is not None else contextlib.nullcontext():
            slow = model(ids).logits
            slow_next = greedy(model, ids[:, :-3], n=4)[1]
            with use_fast_scan():
                assert module.mamba2_chunk_scan is chunk_scan
                fast = model(ids).logits
                fast_next = greedy(model, ids[:, :-3], n=4)[1]
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast_next, slow_next, rtol=1e-5, atol=1e-5)
    assert module.mamba2_chunk_scan is original
    assert not torch.allclose(model(ids).logits, slow)  # the steered run did change the logits


@torch.no_grad()
def test_fast_chunk_scan_at_ref_mamba2s_real_shape():
    """The shipped ref-mamba2 (16 heads of 32, state 64, chunks of 64): 2 x 200 tokens, over three chunks
    and a part of one, give transformers' logits."""
    from lm_eval_ssmsteer.loading import load_model

    model, _ = load_model("ref-mamba2", device="cpu")
    ids = torch.randint(3, model.config.vocab_size, (2, 200), generator=torch.Generator().manual_seed(0))
    slow = model(ids, use_cache=False).logits
    with use_fast_scan():
        fast = model(ids, use_cache=False).logits
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_fast_chunk_scan_at_one_mamba2_130m_layer():
    """One layer of mamba2-130m's shape (24 heads of 64, one group, state 128, chunks of 256), 300 tokens from
    a given state: a whole chunk and a part of one give transformers' outputs and final state. (A whole model
    at this shape is out of reach here: transformers 5.17's scan broadcasts C·B over heads and states, some
    2 GB for this one layer.)"""
    from transformers.models.mamba2 import modeling_mamba2

    x, dt, A, B, C, D, bias, initial = _chunk_inputs(300, b=1, h=24, p=64, groups=1, n=128)
    kw = {"chunk_size": 256, "D": D, "dt_bias": bias, "initial_states": initial, "dt_softplus": True}
    kw |= {"dt_limit": (0.0, float("inf")), "return_final_states": True}
    y, last = chunk_scan(x, dt, A, B, C, **kw)
    ry, rlast = modeling_mamba2.mamba2_chunk_scan(x, dt, A, B, C, **kw)
    scale = ry.abs().max()
    torch.testing.assert_close(y, ry, rtol=1e-5, atol=1e-6 * scale)
    torch.testing.assert_close(last, rlast, rtol=1e-5, atol=1e-6 * rlast.abs().max())


def test_fast_scan_refusals():
    assert fast_scan_refusal_for("mamba2", "cpu") is None
    assert fast_scan_refusal_for("bamba", "cpu") is None
    assert "on cuda it would replace the kernels" in fast_scan_refusal_for("mamba2", "cuda")
    assert "this model is gpt2" in fast_scan_refusal_for("gpt2", "cpu")
