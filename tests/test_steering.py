"""Steering on tiny random models of each architecture: exactness, reference agreement, padding."""

from __future__ import annotations

import sys
from types import MethodType

import pytest
import torch
import transformers
from reference import reference_logits
from steering_checks import greedy, hook_count, random_ids, rel_diff, some_channels, steered_generation
from tiny import ARCHITECTURES, make_model, make_tokenizer

from lm_eval_ssmsteer.mamba.arch import describe_model, mamba_mixers
from lm_eval_ssmsteer.mamba.compat import SCAN_FUNCTIONS, scan_functions
from lm_eval_ssmsteer.mamba.sites import SITES
from lm_eval_ssmsteer.spec import SteeringSpec
from lm_eval_ssmsteer.steering import steer

POSITIONS = ("all", "prompt", "generated")


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request):
    return make_model(request.param, seed=1)


@pytest.mark.parametrize("site", SITES)
@torch.no_grad()
def test_scale_one_reproduces_unsteered_logits_bitwise(model, site):
    ids = random_ids()
    base = model(ids).logits
    base_seq, base_gen = greedy(model, ids)
    for positions in POSITIONS:
        spec = SteeringSpec.single(layer="all", site=site, channels="all", scale=1.0, positions=positions)
        with steer(model, spec):
            assert torch.equal(model(ids).logits, base)
            seq, gen = greedy(model, ids)
        assert torch.equal(seq, base_seq) and torch.equal(gen, base_gen)


@torch.no_grad()
def test_reference_matches_unsteered_model(model):
    ids = random_ids()
    assert (
        rel_diff(
            reference_logits(model, ids, {}, torch.zeros(ids.shape, dtype=torch.bool)), model(ids).logits
        )
        < 1e-5
    )


@pytest.mark.parametrize("site", SITES)
@torch.no_grad()
def test_site_effect_matches_independent_reference(model, site):
    ids = random_ids()
    layer, scale = 1, 2.5
    channels = some_channels(model, site)
    spec = SteeringSpec.single(layer=layer, site=site, channels=channels, scale=scale)
    with steer(model, spec):
        steered = model(ids).logits
    vec = torch.ones(describe_model(model).site_width(site))
    vec[channels] = scale
    expected = reference_logits(model, ids, {(layer, site): vec}, torch.ones(ids.shape, dtype=torch.bool))
    assert rel_diff(steered, model(ids).logits) > 1e-4, (
        "steering had no visible effect: the test could not fail"
    )
    assert rel_diff(steered, expected) < 1e-5


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("site", SITES)
@torch.no_grad()
def test_positions_in_generation_match_reference(model, site, positions):
    """Cached greedy decoding with prompt/generated/all steering equals a full re-computation that
    steers exactly those positions."""
    layer = 2
    gen_logits, full, where, vec, p = steered_generation(model, layer, site, positions, 5, 1e-4)
    expected = reference_logits(model, full, {(layer, site): vec}, where)[:, p - 1 :]
    assert rel_diff(gen_logits, expected) < 1e-5


@pytest.mark.parametrize("site", ("mixer_out", "delta", "B", "gate"))
@torch.no_grad()
def test_batched_left_padded_generation_equals_one_by_one(model, site):
    tok = make_tokenizer()
    tok.padding_side = "left"
    texts = ["a short one", "a somewhat longer prompt here", "mid length text"]
    spec = SteeringSpec.single(layer="all", site=site, channels=some_channels(model, site), scale=2.0)
    batch = tok(texts, return_tensors="pt", padding=True)
    with steer(model, spec):
        seq, logits = greedy(model, batch["input_ids"], batch["attention_mask"])
        width = batch["input_ids"].shape[1]
        for i, text in enumerate(texts):
            single = tok([text], return_tensors="pt")
            s_seq, s_logits = greedy(model, single["input_ids"], single["attention_mask"])
            assert torch.equal(seq[i, width:], s_seq[0, single["input_ids"].shape[1] :])
            assert rel_diff(logits[i], s_logits[0]) < 1e-5


@torch.no_grad()
def test_hooks_removed_even_after_an_exception(model):
    ids = random_ids()
    base = model(ids).logits
    hooks_before = hook_count(model)
    module = sys.modules[type(model.base_model.layers[0].mixer).__module__]
    family = describe_model(model).family
    functions_before = {n: vars(module).get(n) for n in SCAN_FUNCTIONS[family]}
    spec = {
        "version": 1,
        "interventions": [{"layer": 0, "site": s, "channels": "all", "scale": 4.0} for s in SITES],
    }
    with pytest.raises(RuntimeError, match="boom"), steer(model, spec):
        assert hook_count(model) > hooks_before
        assert not torch.equal(model(ids).logits, base)
        raise RuntimeError("boom")
    assert hook_count(model) == hooks_before
    assert {n: vars(module).get(n) for n in SCAN_FUNCTIONS[family]} == functions_before
    assert torch.equal(model(ids).logits, base)


@torch.no_grad()
def test_interventions_compose_multiplicatively(model):
    ids = random_ids()
    twice = {
        "version": 1,
        "interventions": [
            {"layer": 1, "site": "delta", "channels": "all", "scale": 2.0},
            {"layer": 1, "site": "delta", "channels": "all", "scale": 1.5},
        ],
    }
    with steer(model, twice):
        composed = model(ids).logits
    with steer(model, SteeringSpec.single(layer=1, site="delta", scale=3.0)):
        single = model(ids).logits
    assert rel_diff(composed, single) < 1e-6


@pytest.mark.parametrize("site", ("delta", "B", "ssm_out"))
@torch.no_grad()
def test_nested_steering_composes_and_unwinds(model, site):
    """Two ``steer`` blocks on one mixer (a planted damage under a found spec: the survey) multiply, as
    one spec with the product scale does, at scan-swapped sites too; leaving them restores the model."""
    ids = random_ids()
    base = model(ids).logits
    module = sys.modules[type(model.base_model.layers[0].mixer).__module__]
    functions_before = {n: vars(module).get(n) for n in SCAN_FUNCTIONS[describe_model(model).family]}
    with steer(model, SteeringSpec.single(layer=1, site=site, scale=2.0)):
        with steer(model, SteeringSpec.single(layer=1, site=site, scale=1.5)):
            nested = model(ids).logits
        outer_only = model(ids).logits
    with steer(model, SteeringSpec.single(layer=1, site=site, scale=3.0)):
        single = model(ids).logits
    with steer(model, SteeringSpec.single(layer=1, site=site, scale=2.0)):
        assert torch.equal(outer_only, model(ids).logits)
    assert rel_diff(nested, single) < 1e-5
    assert rel_diff(nested, outer_only) > 1e-4
    assert {n: vars(module).get(n) for n in SCAN_FUNCTIONS[describe_model(model).family]} == functions_before
    assert torch.equal(model(ids).logits, base)


def test_no_spec_installs_nothing(model):
    before = hook_count(model)
    with steer(model, None) as active:
        assert active is None and hook_count(model) == before


@torch.no_grad()
def test_training_mode_takes_the_steerable_path(model):
    """In training mode without a cache, transformers would try the fused kernel; steering must
    still apply (the fused path is switched off for steered mixers)."""
    ids = random_ids()
    spec = SteeringSpec.single(layer=0, site="delta", scale=3.0)
    with steer(model, spec):
        eval_logits = model(ids).logits
    model.train()
    try:
        with steer(model, spec):
            train_logits = model(ids, use_cache=False).logits
    finally:
        model.eval()
    assert rel_diff(train_logits, eval_logits) < 1e-6


@torch.no_grad()
def test_steering_acts_through_a_hub_kernel_that_replaces_the_scan(model):
    """From 5.25 (with the ``kernels`` package it requires) a mixer's calls to a module-level scan function
    are routed to a private per-instance wrapper, which ``kernelize`` (on by default in
    ``from_pretrained``) may replace with a hub kernel on CUDA. Steering wraps the module-level name, so a
    replaced kernel still receives the steered inputs: here a stand-in kernel that counts its calls."""
    mixer = next(iter(mamba_mixers(model).values()))
    private = getattr(mixer, "_kernel_funcs", None)
    if private is None:
        pytest.skip(f"transformers {transformers.__version__} routes no scan to per-mixer kernels (< 5.25)")
    module_dict, (scan_name, _, _) = scan_functions(mixer, describe_model(model).family)
    kernel = private[module_dict[scan_name].kernel_layer_name]
    ids = random_ids()
    base = model(ids).logits
    spec = SteeringSpec.single(layer="all", site="delta", channels="all", scale=0.5)
    with steer(model, spec):
        steered = model(ids).logits
    calls = []
    saved = kernel.__dict__.get("forward")
    real = kernel.forward

    def hub_kernel(self, *args, **kwargs):
        calls.append(args[1])  # dt, as the scan receives it
        return real(*args, **kwargs)

    kernel.forward = MethodType(hub_kernel, kernel)  # as kernelize binds a hub kernel's forward
    try:
        with steer(model, spec):
            assert torch.equal(model(ids).logits, steered)
        n_steered = len(calls)
        assert torch.equal(model(ids).logits, base)
        with steer(model, SteeringSpec.single(layer="all", site="delta", channels="all", scale=1.0)):
            assert torch.equal(model(ids).logits, base)
    finally:
        if saved is None:
            del kernel.forward
        else:
            kernel.forward = saved
    assert n_steered > 0 and not torch.equal(steered, base)
