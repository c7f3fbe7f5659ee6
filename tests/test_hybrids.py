"""Steering the Mamba layers of hybrid models (Bamba, Granite 4.0-H, Falcon-H1, Nemotron-H, Zamba2,
Jamba) on tiny random configs: addressing, exactness, agreement with an independent reference mixer,
positions in cached generation, left padding."""

from __future__ import annotations

import pytest
import torch
from reference import hybrid_reference_logits
from steering_checks import greedy, hook_count, random_ids, rel_diff, some_channels, steered_generation
from tiny import HYBRIDS, MAMBA_LAYERS, hybrid_config, make_model, make_tokenizer

from lm_eval_ssmsteer.mamba.arch import describe_model, layer_kind, mamba_mixers
from lm_eval_ssmsteer.mamba.compat import SCAN_FUNCTIONS
from lm_eval_ssmsteer.mamba.hybrid_configs import make_ssm_visible
from lm_eval_ssmsteer.mamba.sites import SITES
from lm_eval_ssmsteer.spec import SpecError, SteeringSpec
from lm_eval_ssmsteer.steering import steer

POSITIONS = ("all", "prompt", "generated")
KINDS = {
    "bamba": ["mamba", "attention", "mamba"],
    "granitemoehybrid": ["mamba", "attention", "mamba"],
    "falcon_h1": ["mamba+attention"] * 3,
    "nemotron_h": ["mamba", "attention", "mamba", "mlp"],
    "zamba2": ["mamba", "mamba+attention", "mamba"],
    "jamba": ["mamba", "attention", "mamba"],
}


@pytest.fixture(scope="module", params=HYBRIDS)
def model(request):
    return make_model(request.param, seed=1)


def _last_mamba_layer(model):
    return describe_model(model).mamba_layers[-1]


def test_layer_means_the_decoder_layer_and_the_mamba_layers_are_found(model):
    arch = model.config.model_type
    info = describe_model(model)
    assert info.mamba_layers == MAMBA_LAYERS[arch]
    assert tuple(mamba_mixers(model)) == MAMBA_LAYERS[arch]
    assert [layer_kind(model, i) for i in range(info.n_layers)] == KINDS[arch]
    assert info.n_layers == len(model.base_model.layers)


def test_a_spec_on_a_layer_without_mamba_fails_and_lists_the_mamba_layers(model):
    info = describe_model(model)
    plain = [i for i in range(info.n_layers) if i not in info.mamba_layers]
    if not plain:  # Falcon-H1 and Zamba2: every layer holds a Mamba mixer
        assert info.mamba_layers == tuple(range(info.n_layers))
        return
    listed = ", ".join(map(str, info.mamba_layers))
    spec = SteeringSpec.single(layer=plain[0], site="delta", scale=2.0)
    message = rf"layer {plain[0]} of \w+ has no Mamba mixer .*Mamba layers are {listed}$"
    with pytest.raises(SpecError, match=message), steer(model, spec):
        pass


@torch.no_grad()
def test_residual_steers_the_block_output_of_an_attention_or_mlp_layer(model):
    info = describe_model(model)
    plain = [i for i in range(info.n_layers) if i not in info.mamba_layers]
    if not plain:
        return
    ids = random_ids()
    base = model(ids).logits
    with steer(model, SteeringSpec.single(layer=plain[0], site="residual", scale=1.0)):
        assert torch.equal(model(ids).logits, base)
    with steer(model, SteeringSpec.single(layer=plain[-1], site="residual", scale=3.0)):
        steered = model(ids).logits

    def triple(module, args, output):  # the reference: the block's hidden states x3, by hand
        return (output[0] * 3.0, *output[1:]) if isinstance(output, tuple) else output * 3.0

    handle = model.base_model.layers[plain[-1]].register_forward_hook(triple)
    try:
        reference = model(ids).logits
    finally:
        handle.remove()
    assert not torch.equal(steered, base)
    assert torch.equal(steered, reference)


def test_all_means_every_mamba_layer(model):
    from lm_eval_ssmsteer.steering import SteeringPlan

    plan = SteeringPlan.build(model, SteeringSpec.single(layer="all", site="B", scale=2.0))
    assert tuple(plan.factors) == describe_model(model).mamba_layers


@pytest.mark.parametrize("site", SITES)
@torch.no_grad()
def test_scale_one_reproduces_unsteered_logits_bitwise(model, site):
    ids = random_ids()
    base = model(ids).logits
    base_seq, base_gen = greedy(model, ids, n=5)
    for positions in POSITIONS:
        spec = SteeringSpec.single(layer="all", site=site, channels="all", scale=1.0, positions=positions)
        with steer(model, spec):
            assert torch.equal(model(ids).logits, base)
            seq, gen = greedy(model, ids, n=5)
        assert torch.equal(seq, base_seq) and torch.equal(gen, base_gen)


@torch.no_grad()
def test_reference_mixer_matches_the_unsteered_model(model):
    ids = random_ids()
    layer = _last_mamba_layer(model)
    expected = hybrid_reference_logits(
        model, ids, layer, mamba_mixers(model)[layer], {}, torch.ones(ids.shape, dtype=torch.bool)
    )
    assert rel_diff(expected, model(ids).logits) < 1e-5


@pytest.mark.parametrize("site", SITES)
@torch.no_grad()
def test_site_effect_matches_independent_reference(model, site):
    ids = random_ids()
    layer, scale = _last_mamba_layer(model), 2.5
    channels = some_channels(model, site)
    with steer(model, SteeringSpec.single(layer=layer, site=site, channels=channels, scale=scale)):
        steered = model(ids).logits
    vec = torch.ones(describe_model(model).site_width(site))
    vec[channels] = scale
    mixer = mamba_mixers(model)[layer]
    expected = hybrid_reference_logits(
        model, ids, layer, mixer, {site: vec}, torch.ones(ids.shape, dtype=torch.bool)
    )
    assert rel_diff(steered, model(ids).logits) > 1e-5, (
        "steering had no visible effect: the test could not fail"
    )
    assert rel_diff(steered, expected) < 1e-5


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("site", SITES)
@torch.no_grad()
def test_positions_in_generation_match_reference(model, site, positions):
    """Cached greedy decoding with prompt/generated/all steering equals a full re-computation (no cache)
    whose reference mixer steers exactly those positions."""
    layer = describe_model(model).mamba_layers[0]
    gen_logits, full, where, vec, p = steered_generation(model, layer, site, positions, 4, 1e-5)
    mixer = mamba_mixers(model)[layer]
    expected = hybrid_reference_logits(model, full, layer, mixer, {site: vec}, where)[:, p - 1 :]
    assert rel_diff(gen_logits, expected) < 1e-5


@pytest.mark.parametrize("site", ("mixer_out", "residual", "delta", "B", "ssm_out", "gate"))
@torch.no_grad()
def test_batched_left_padded_generation_equals_one_by_one(model, site):
    tok = make_tokenizer()
    tok.padding_side = "left"
    texts = ["a short one", "a somewhat longer prompt", "mid length"]
    spec = SteeringSpec.single(layer="all", site=site, channels=some_channels(model, site), scale=2.0)
    batch = tok(texts, return_tensors="pt", padding=True)
    with steer(model, spec):
        seq, logits = greedy(model, batch["input_ids"], batch["attention_mask"], n=5)
        width = batch["input_ids"].shape[1]
        for i, text in enumerate(texts):
            single = tok([text], return_tensors="pt")
            s_seq, s_logits = greedy(model, single["input_ids"], single["attention_mask"], n=5)
            new = s_seq[0, single["input_ids"].shape[1] :]  # ends early where it generates EOS (= pad)
            assert torch.equal(seq[i, width : width + len(new)], new)
            assert rel_diff(logits[i, : len(new)], s_logits[0]) < 1e-4


@torch.no_grad()
def test_hooks_removed_and_scans_restored_even_after_an_exception(model):
    import sys

    ids = random_ids()
    base = model(ids).logits
    hooks_before = hook_count(model)
    mixer = next(iter(mamba_mixers(model).values()))
    module = sys.modules[type(mixer).__module__]
    names = SCAN_FUNCTIONS[describe_model(model).family]
    functions_before = {n: vars(module).get(n) for n in names}
    layer = describe_model(model).mamba_layers[0]
    spec = {"version": 1, "interventions": [{"layer": layer, "site": s, "scale": 4.0} for s in SITES]}
    with pytest.raises(RuntimeError, match="boom"), steer(model, spec):
        assert not torch.equal(model(ids).logits, base)
        raise RuntimeError("boom")
    assert hook_count(model) == hooks_before
    assert {n: vars(module).get(n) for n in names} == functions_before
    assert torch.equal(model(ids).logits, base)


def _falcon_h1(**norm):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    config = hybrid_config("falcon_h1")
    for key, value in norm.items():
        setattr(config, key, value)
    return make_ssm_visible(AutoModelForCausalLM.from_config(config), seed=2).eval()


@pytest.mark.parametrize("site", ("ssm_out", "gate"))
@torch.no_grad()
def test_falcon_h1_with_its_gated_norm_matches_the_reference(site):
    model = _falcon_h1(mamba_rms_norm=True, mamba_norm_before_gate=False)
    ids = random_ids()
    channels = [1, 7, 30, 44]
    with steer(model, SteeringSpec.single(layer=1, site=site, channels=channels, scale=2.5)):
        steered = model(ids).logits
    vec = torch.ones(64)
    vec[channels] = 2.5
    mixer = mamba_mixers(model)[1]
    expected = hybrid_reference_logits(
        model, ids, 1, mixer, {site: vec}, torch.ones(ids.shape, dtype=torch.bool)
    )
    assert rel_diff(steered, model(ids).logits) > 1e-5
    assert rel_diff(steered, expected) < 1e-5


def test_falcon_h1_refuses_gate_where_it_multiplies_after_the_norm():
    model = _falcon_h1(mamba_rms_norm=True, mamba_norm_before_gate=True)
    message = r"interventions\[0\]\.site: site 'gate' cannot be steered here: .*ssm_out"
    with (
        pytest.raises(SpecError, match=message),
        steer(model, SteeringSpec.single(layer=0, site="gate", scale=2.0)),
    ):
        pass
    ids = random_ids()
    vec = torch.full((64,), 2.0)
    with torch.no_grad(), steer(model, SteeringSpec.single(layer=0, site="ssm_out", scale=2.0)):
        steered = model(ids).logits
    expected = hybrid_reference_logits(
        model, ids, 0, mamba_mixers(model)[0], {"ssm_out": vec}, torch.ones(ids.shape, dtype=torch.bool)
    )
    assert rel_diff(steered, expected) < 1e-5


@torch.no_grad()
def test_fast_scan_runs_jambas_mamba_layers_like_transformers_scan():
    from lm_eval_ssmsteer.mamba.fastscan import fast_scan_refusal, use_fast_scan

    model = make_model("jamba", seed=1)
    assert fast_scan_refusal(model) is None  # Jamba's mixers are Mamba-1
    ids = random_ids()
    spec = SteeringSpec.single(layer="all", site="delta", scale=1.7)
    with steer(model, spec):
        slow = model(ids).logits
        with use_fast_scan():
            fast = model(ids).logits
    assert rel_diff(fast, slow) < 1e-5
    assert not torch.equal(fast, model(ids).logits)


def _clamping_model(arch: str):
    """A tiny hybrid whose last Mamba layer's Δ falls below the model's time_step_limit lower bound
    (Zamba2 and Nemotron-H clamp Δ at their time_step_limit; Nemotron-H's lower bound is time_step_min up
    to 5.24, the config's time_step_limit from 5.25) for four heads."""
    model = make_model(arch, seed=1)
    layer = describe_model(model).mamba_layers[-1]
    mixer = mamba_mixers(model)[layer]
    mixer.time_step_limit = (0.1, float("inf"))  # time_step_min 0.1: the clamped heads weigh in the output
    with torch.no_grad():
        mixer.dt_bias[:4] = -12.0  # softplus(dt - 12) ~ 6e-6 < time_step_min
    return model, layer, mixer


def _kernel_like_softplus(module_dict, monkeypatch):
    """Make the prefill scan compute its softplus as log1p(exp(x)), as the mamba-ssm kernel does, not with
    torch's softplus: Δ put into dt by inverting torch's softplus then no longer comes back bit for bit
    (what the GPU showed: scale 1.0 on delta 5e-5 off in fp32 on Zamba2 and Nemotron-H)."""
    name = SCAN_FUNCTIONS["mamba2"][0]
    original = module_dict[name]

    def scan(x, dt, A, B, C, *args, dt_bias=None, dt_softplus=False, dt_limit=(0.0, float("inf")), **kw):
        d = dt.float() + (0.0 if dt_bias is None else dt_bias.float())
        if dt_softplus:
            d = torch.where(d <= 20.0, torch.log1p(torch.exp(d)), d)
        d = d.clamp(*dt_limit).to(dt.dtype)
        return original(x, d, A, B, C, *args, dt_bias=None, dt_softplus=False, **kw)

    monkeypatch.setitem(module_dict, name, scan)


@pytest.mark.parametrize("arch", ("zamba2", "nemotron_h"))
@torch.no_grad()
def test_delta_under_a_time_step_limit_is_exact_at_one_and_right_when_scaled(arch, monkeypatch):
    from lm_eval_ssmsteer.mamba.compat import scan_functions

    model, layer, mixer = _clamping_model(arch)
    _kernel_like_softplus(scan_functions(mixer, "mamba2")[0], monkeypatch)
    ids = random_ids()
    base = model(ids).logits
    clamp, mixer.time_step_limit = mixer.time_step_limit, (0.0, float("inf"))
    assert not torch.equal(model(ids).logits, base), "the mixer no longer clamps Δ: the test is void"
    mixer.time_step_limit = clamp
    for scale in (1.0,):
        with steer(model, SteeringSpec.single(layer="all", site="delta", scale=scale)):
            assert torch.equal(model(ids).logits, base)
    heads = mixer.num_heads
    for channels, scale in (([0, 3], 0.3), ([3, 5], 4.0), (list(range(heads)), 0.05)):
        with steer(model, SteeringSpec.single(layer=layer, site="delta", channels=channels, scale=scale)):
            steered = model(ids).logits
        vec = torch.ones(heads)
        vec[channels] = scale
        expected = hybrid_reference_logits(
            model, ids, layer, mixer, {"delta": vec}, torch.ones(ids.shape, dtype=torch.bool)
        )
        assert rel_diff(steered, base) > 1e-5, "steering had no visible effect: the test could not fail"
        assert rel_diff(steered, expected) < 1e-5, (channels, scale)
