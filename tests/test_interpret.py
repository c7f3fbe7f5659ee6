"""Hidden attention, LaTIM and knockout on tiny random Mamba-1, FalconMamba and Mamba-2 models (fp32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers

from lm_eval_ssmsteer.interpret.attention import hidden_attention, scan_from_attention
from lm_eval_ssmsteer.interpret.capture import (
    capture_layers,
    check_layers,
    check_positions,
    layer_internals,
    layer_window,
)
from lm_eval_ssmsteer.interpret.knockout import (
    FEATURES,
    KnockoutSpec,
    knocked_channels,
    knocked_scan,
    knockout,
    knockout_effect,
)
from lm_eval_ssmsteer.interpret.latim import iter_contributions, latim_maps, latim_rows, rollout
from lm_eval_ssmsteer.mamba.arch import mamba_blocks
from lm_eval_ssmsteer.mamba.compat import gated_norm_group_size
from lm_eval_ssmsteer.mamba.mixer_math import mixer_internals, readout

VOCAB, LENGTH, N_LAYERS = 64, 40, 3
NOT_MAMBA = r"LlamaForCausalLM \(model_type 'llama'\) is not a supported Mamba-family model"
ARCHS = ("mamba1", "falcon", "mamba2")


def build_model(arch: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A tiny random model whose A, D, Δ and conv bias are spread out so every term of the math matters."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=N_LAYERS, state_size=8, use_bias=True)
    if arch == "mamba1":
        model = transformers.MambaForCausalLM(transformers.MambaConfig(time_step_rank=4, **common))
    elif arch == "falcon":
        config = transformers.FalconMambaConfig(time_step_rank=4, **common)
        model = transformers.FalconMambaForCausalLM(config)
    else:
        config = transformers.Mamba2Config(
            num_heads=8, head_dim=8, expand=2, n_groups=2, chunk_size=16, **common
        )
        model = transformers.Mamba2ForCausalLM(config)
    with torch.no_grad():
        for block in model.backbone.layers:
            mixer = block.mixer
            mixer.A_log.add_(0.5 * torch.randn_like(mixer.A_log))
            mixer.D.copy_(torch.randn_like(mixer.D))
            mixer.conv1d.bias.copy_(0.3 * torch.randn_like(mixer.conv1d.bias))
            dt_bias = mixer.dt_proj.bias if hasattr(mixer, "dt_proj") else mixer.dt_bias
            dt_bias.copy_(torch.empty_like(dt_bias).uniform_(-4.0, 0.5))  # Δ from ~0.02 to ~1
            mixer.out_proj.bias.copy_(0.1 * torch.randn_like(mixer.out_proj.bias))
    return model.eval()


def random_ids(seed: int = 1, length: int = LENGTH) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors here are tiny: intra-op threads only add overhead (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=ARCHS)
def model(request) -> transformers.PreTrainedModel:
    return build_model(request.param)


def test_mixer_math_reproduces_the_real_mixer_output_every_layer(model):
    ids = random_ids()
    captured = capture_layers(model, ids, range(N_LAYERS))
    for layer, blocks in zip(range(N_LAYERS), mamba_blocks(model), strict=True):
        internals = mixer_internals(blocks.mixer, captured[layer].mixer_input)
        assert relative_error(internals.output, captured[layer].mixer_output) < 1e-5, layer


def test_mixer_math_matches_left_padded_batches(model):
    ids = random_ids()
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    mixer = mamba_blocks(model)[1].mixer
    hidden = torch.randn(1, LENGTH, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        real = mixer(hidden, attention_mask=mask)
    internals = mixer_internals(mixer, hidden, attention_mask=mask)
    assert relative_error(internals.output[0, 5:], real[0, 5:]) < 1e-5


def test_latim_decomposition_sums_to_the_real_mixer_output_every_layer(model):
    ids = random_ids()
    captured = capture_layers(model, ids, range(N_LAYERS))
    internals = layer_internals(model, ids, range(N_LAYERS))
    for layer in range(N_LAYERS):
        total = torch.zeros_like(captured[layer].mixer_output[0])
        chunks = 0
        for rows, T, bias in iter_contributions(internals[layer], memory_bytes=40_000):  # several chunks
            assert torch.all(T[:, rows.stop :] == 0)
            total[rows.start : rows.stop] = T.sum(1) + bias
            chunks += 1
        assert chunks > 3
        assert relative_error(total, captured[layer].mixer_output[0]) < 1e-5, layer


def test_hidden_attention_reproduces_the_scan_output(model):
    ids = random_ids()
    captured = capture_layers(model, ids, range(N_LAYERS))
    internals = layer_internals(model, ids, range(N_LAYERS))
    for layer in range(N_LAYERS):
        y = scan_from_attention(internals[layer], memory_bytes=30_000)
        assert relative_error(y, internals[layer].y[0]) < 1e-5
        _, output, _ = readout(internals[layer], y[None])
        assert relative_error(output, captured[layer].mixer_output) < 1e-5


def test_hidden_attention_aggregates_are_views_of_the_per_feature_matrices(model):
    internals = layer_internals(model, random_ids(), [1])[1]
    per_feature = hidden_attention(internals, "none")  # (d, l, l) or (H, l, l)
    assert torch.allclose(hidden_attention(internals, "mean"), per_feature.mean(0), atol=1e-7)
    assert torch.all(torch.triu(per_feature, diagonal=1) == 0)
    if internals.kind == "mamba1":
        by_hand = (per_feature * internals.v[0].T[:, None, :]).norm(dim=0)
        assert torch.allclose(hidden_attention(internals, "norm"), by_hand, rtol=1e-5, atol=1e-7)


def test_chunking_does_not_change_the_maps(model):
    internals = layer_internals(model, random_ids(), [2])[2]
    whole = latim_maps(internals, memory_bytes=2**30)
    chunked = latim_maps(internals, memory_bytes=20_000)
    for key in whole:  # ALTI's ‖o‖₁ − ‖o − T‖₁ amplifies fp32 rounding of T a little
        assert torch.allclose(whole[key], chunked[key], atol=1e-6 if key == "l2" else 1e-5)
    assert torch.allclose(hidden_attention(internals, "norm"), hidden_attention(internals, "norm", 20_000))


@pytest.mark.parametrize("rows", [range(0, 5), range(17, 23), range(LENGTH - 6, LENGTH)])
def test_latim_rows_equal_those_rows_of_the_full_maps(model, rows):
    internals = layer_internals(model, random_ids(), [1])[1]
    full = latim_maps(internals)
    for budget in (2**30, 20_000):  # one chunk, and one row per chunk
        some = latim_rows(internals, rows, memory_bytes=budget)
        for key in full:
            assert some[key].shape == (len(rows), rows.stop)
            assert torch.allclose(some[key], full[key][rows.start : rows.stop, : rows.stop], atol=1e-6)
    with pytest.raises(ValueError, match=f"the input has {LENGTH} tokens"):
        latim_rows(internals, range(LENGTH - 2, LENGTH + 1))


def test_latim_maps_are_causal_row_distributions(model):
    ids = random_ids()
    captured = capture_layers(model, ids, range(N_LAYERS))
    internals = layer_internals(model, ids, range(N_LAYERS))
    block_maps = []
    for layer in range(N_LAYERS):
        maps = latim_maps(internals[layer], block_input=captured[layer].block_input)
        for key, scores in maps.items():
            sums = scores.sum(-1)
            if key.startswith("l2"):
                assert torch.allclose(sums, torch.ones(LENGTH), atol=1e-5)
            else:  # an ALTI row is all zero when no single token brings o_i closer to itself
                assert torch.all(((sums - 1).abs() < 1e-5) | (sums == 0)) and sums.sum() > LENGTH / 2
            assert torch.all(torch.triu(scores, diagonal=1) == 0) and torch.all(scores >= 0)
        block_maps.append(maps["l2_block"])
    chained = rollout(block_maps)
    assert torch.allclose(chained.sum(-1), torch.ones(LENGTH), atol=1e-4)
    assert torch.allclose(chained, block_maps[2] @ block_maps[1] @ block_maps[0])


def test_no_future_token_influences_a_past_position(model):
    ids = random_ids()
    changed = ids.clone()
    changed[0, 25:] = (changed[0, 25:] + 7) % VOCAB
    before = layer_internals(model, ids, range(N_LAYERS))
    after = layer_internals(model, changed, range(N_LAYERS))
    for layer in range(N_LAYERS):
        maps_before, maps_after = latim_maps(before[layer]), latim_maps(after[layer])
        for key in maps_before:
            assert torch.equal(maps_before[key][:25], maps_after[key][:25])
        assert not torch.allclose(maps_before["l2"][25:], maps_after["l2"][25:])
        assert torch.equal(hidden_attention(before[layer])[:25], hidden_attention(after[layer])[:25])
    # Knocking out future sources leaves an earlier prediction exactly as it was.
    spec = KnockoutSpec(layers=(0, 1, 2), sources=(30, 31, 32), targets=tuple(range(LENGTH)))
    effect = knockout_effect(model, ids, spec, position=20)
    assert effect.prob_knocked == pytest.approx(effect.prob_base, rel=1e-6)


def test_knockout_with_no_sources_equals_no_knockout(model):
    ids = random_ids()
    with torch.no_grad():
        base = model(input_ids=ids, use_cache=False).logits
        with knockout(model, KnockoutSpec(layers=(0, 1, 2), sources=(), targets=tuple(range(LENGTH)))):
            knocked = model(input_ids=ids, use_cache=False).logits
    assert relative_error(knocked, base) < 1e-5


def knocked_features_by_hand(mixer, features: str) -> set[int]:
    """The paper's split from the weights alone: score each channel (Mamba-1: Σ_n exp(−exp(A_log[e, n])))
    or head (Mamba-2: exp(−exp(A_log[h]))); the fast third is the n // 3 lowest scores, the slow third the
    n // 3 highest. knock_X knocks out the X third, keep_X every feature outside it, all every feature."""
    score = torch.exp(-torch.exp(mixer.A_log.detach().float()))
    if score.dim() == 2:
        score = score.sum(-1)
    n = score.numel()
    if features == "all":
        return set(range(n))
    ranked = sorted(range(n), key=lambda f: score[f].item())  # fastest decay first
    action, speed = features.split("_")
    third = set(ranked[: n // 3] if speed == "fast" else ranked[n - n // 3 :])
    return third if action == "knock" else set(range(n)) - third


def brute_force_knockout(mixer, hidden, sources, targets, features) -> torch.Tensor:
    """Independent reference: run the recurrence step by step twice, the second state skipping the
    source inputs of the knocked features (still decaying), and read targets from the second."""
    internals = mixer_internals(mixer, hidden)  # pre-scan quantities only: v, Δ, B, C, z
    v, delta, z = internals.v[0], internals.delta[0], internals.z[0]
    A = -torch.exp(mixer.A_log.detach().float())
    D = mixer.D.detach().float()
    length, d = v.shape
    if A.dim() == 2:  # Mamba-1: per channel
        feature_of_channel = torch.arange(d)
        B = C = None
    else:  # Mamba-2: per head, B/C per group
        heads = A.shape[0]
        feature_of_channel = torch.arange(d) // (d // heads)
        group_of_head = torch.arange(heads) // (heads // internals.B.shape[2])
    knocked_features = knocked_features_by_hand(mixer, features)
    y = torch.zeros(length, d)
    for e in range(d):
        f = int(feature_of_channel[e])
        if A.dim() == 2:
            a, dt = A[e], delta[:, e]
            B, C = internals.B[0], internals.C[0]
            skip = D[e]
        else:
            a, dt = A[f].expand(internals.B.shape[-1]), delta[:, f]
            B, C = internals.B[0, :, group_of_head[f]], internals.C[0, :, group_of_head[f]]
            skip = D[f]
        h_normal = torch.zeros(B.shape[-1])
        h_knocked = torch.zeros(B.shape[-1])
        for t in range(length):
            h_normal = torch.exp(dt[t] * a) * h_normal + dt[t] * B[t] * v[t, e]
            skipped = t in sources and f in knocked_features
            h_knocked = torch.exp(dt[t] * a) * h_knocked + (0.0 if skipped else dt[t] * B[t] * v[t, e])
            state = h_knocked if t in targets else h_normal
            y[t, e] = (state * C[t]).sum() + skip * v[t, e]
    gated = y * F.silu(z)
    if A.dim() == 1:
        norm = mixer.norm
        groups = gated.view(length, -1, gated_norm_group_size(norm, d))
        rms = torch.sqrt(groups.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        gated = (groups / rms).view(length, d) * norm.weight.detach()
    return gated @ mixer.out_proj.weight.detach().T + mixer.out_proj.bias.detach()


@pytest.mark.parametrize("features", list(FEATURES))
def test_knockout_equals_a_brute_force_scan_without_the_sources(model, features):
    ids = random_ids(length=16)
    sources, targets = (2, 3, 9), (3, 10, 14, 15)
    spec = KnockoutSpec(layers=(1, 2), sources=sources, targets=(-13, 10, 14, -1), features=features)
    base = capture_layers(model, ids, [1])
    with knockout(model, spec):
        knocked = capture_layers(model, ids, [1, 2])
    blocks = mamba_blocks(model)
    for layer in (1, 2):
        with torch.no_grad():
            mixer, hidden = blocks[layer].mixer, knocked[layer].mixer_input
            reference = brute_force_knockout(mixer, hidden, sources, targets, features)
        assert relative_error(knocked[layer].mixer_output[0], reference) < 1e-5, layer
    moved = (knocked[1].mixer_output - base[1].mixer_output)[0].norm(dim=-1)
    assert moved[list(targets)].max() > 1e-3 and torch.all(moved[[0, 1, 2, 4, 5, 11]] == 0)


def feature_of_each_channel(internals) -> torch.Tensor:
    d = internals.v.shape[-1]
    return torch.arange(d) if internals.kind == "mamba1" else torch.arange(d) // internals.head_dim


@pytest.mark.parametrize("features", list(FEATURES))
def test_the_knocked_channels_follow_the_decay_ranking(model, features):
    mixer = mamba_blocks(model)[1].mixer
    internals = layer_internals(model, random_ids(), [1])[1]
    by_hand = knocked_features_by_hand(mixer, features)
    expected = torch.tensor([int(f) in by_hand for f in feature_of_each_channel(internals)])
    assert torch.equal(knocked_channels(internals, features), expected)
    n = mixer.A_log.shape[0]
    assert len(by_hand) == {"all": n, "knock": n // 3, "keep": n - n // 3}[features.split("_")[0]]


@pytest.mark.parametrize("speed", ["fast", "slow"])
def test_keep_knocks_out_exactly_the_channels_that_knock_spares(model, speed):
    internals = layer_internals(model, random_ids(), [1])[1]
    knock, keep = knocked_channels(internals, f"knock_{speed}"), knocked_channels(internals, f"keep_{speed}")
    assert torch.equal(keep, ~knock) and knock.any() and keep.any()
    feature = feature_of_each_channel(internals)
    for mask in (knock, keep):  # a Mamba-2 head is knocked out whole
        assert all(len(set(mask[feature == f].tolist())) == 1 for f in feature.unique())


@pytest.mark.parametrize("speed", ["fast", "slow"])
def test_knock_and_keep_of_one_third_together_remove_what_all_removes(model, speed):
    internals = layer_internals(model, random_ids(), [1])[1]
    sources, targets = (2, 3, 9, 20), (10, 21, 30, LENGTH - 1)
    removed = {
        features: internals.y - knocked_scan(internals, sources, targets, features)
        for features in ("all", f"knock_{speed}", f"keep_{speed}")
    }
    knocked, kept = removed[f"knock_{speed}"], removed[f"keep_{speed}"]
    assert relative_error(knocked + kept, removed["all"]) < 1e-5
    assert knocked.norm() > 1e-3 * removed["all"].norm() and kept.norm() > 1e-3 * removed["all"].norm()
    untouched = [t for t in range(LENGTH) if t not in targets]
    assert torch.all(removed["all"][:, untouched] == 0)


@pytest.mark.parametrize("old", ["fast", "slow"])
def test_the_ambiguous_old_feature_names_are_refused_naming_both_meanings(old):
    with pytest.raises(ValueError, match=f"features '{old}' is ambiguous") as refused:
        KnockoutSpec(layers=(0,), sources=(0,), targets=(1,), features=old)
    message = str(refused.value)
    assert "\n" not in message
    assert f"knock_{old} (the {old}est-decaying third is knocked out" in message
    assert f"keep_{old} (that third keeps its flow" in message


def test_knockout_effect_reports_probability_change_and_argmax(model):
    ids = random_ids()
    spec = KnockoutSpec(layers=(0, 1, 2), sources=tuple(range(LENGTH - 1)), targets=(-1,))
    effect = knockout_effect(model, ids, spec)
    assert effect.position == LENGTH - 1 and effect.argmax_hit_base
    assert effect.prob_knocked != pytest.approx(effect.prob_base, rel=1e-3)
    expected = 100 * (effect.prob_knocked - effect.prob_base) / effect.prob_base
    assert effect.relative_change_pct == pytest.approx(expected)
    other = knockout_effect(model, ids, spec, target_token=(effect.target_token + 1) % VOCAB)
    assert not other.argmax_hit_base


@torch.no_grad()
def test_knockout_refuses_cached_decoding_steps(model):
    # generate() feeds one token at a time with the cache under transformers' keyword of the day
    # (cache_params up to 5.23, cache from 5.24): either way the step must be refused, not knocked wrongly
    ids = random_ids(length=12)
    spec = KnockoutSpec(layers=(0,), sources=(0,), targets=(-1,))
    with knockout(model, spec), pytest.raises(RuntimeError, match="one-token decoding step with a cache"):
        model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    with knockout(model, spec):  # a whole sequence without a cache is what knockout is for
        model(input_ids=ids, use_cache=False)


def test_knockout_hooks_are_removed_even_after_an_error(model):
    mixers = [block.mixer for block in mamba_blocks(model)]
    with pytest.raises(RuntimeError, match="boom"), knockout(model, KnockoutSpec((0, 2), (1,), (-1,))):
        assert all(len(m._forward_hooks) == 1 for m in (mixers[0], mixers[2]))
        raise RuntimeError("boom")
    assert all(len(m._forward_hooks) == 0 for m in mixers)


def test_bad_inputs_name_the_value_and_the_allowed_range(model):
    ids = random_ids(length=10)
    with pytest.raises(ValueError, match=r"token index 10 is out of range: the input has 10 tokens \(0-9"):
        knockout_effect(model, ids, KnockoutSpec((0,), (10,), (-1,)))
    with pytest.raises(ValueError, match=r"token index -11 is out of range"):
        check_positions([-11], 10, "target")
    with pytest.raises(ValueError, match="window is empty"):
        layer_window(0, 0, N_LAYERS)
    with pytest.raises(ValueError, match="window is empty"):
        KnockoutSpec(layers=(), sources=(0,), targets=(1,))
    with pytest.raises(ValueError, match=r"starting at 2 goes past the last layer 2: .* start must be 0-1"):
        layer_window(2, 2, N_LAYERS)
    with pytest.raises(ValueError, match=r"layer 3 does not exist: the model has 3 layers \(0-2\)"):
        check_layers([3], N_LAYERS)
    spec_past_the_end = KnockoutSpec(layers=(5,), sources=(0,), targets=(1,))
    with pytest.raises(ValueError, match=r"layer 5 does not exist"), knockout(model, spec_past_the_end):
        pass
    internals = layer_internals(model, ids, [0])[0]
    with pytest.raises(ValueError, match=r"per-feature hidden attention of 10 tokens x \d+ features needs"):
        hidden_attention(internals, "none", memory_bytes=100)
    with pytest.raises(ValueError, match="features 'medium'"):
        KnockoutSpec(layers=(0,), sources=(0,), targets=(1,), features="medium")


def test_a_non_mamba_model_is_refused_by_name():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    llama = transformers.LlamaForCausalLM(config)
    with pytest.raises(ValueError, match=NOT_MAMBA):
        layer_internals(llama, random_ids(), [0])
    with (
        pytest.raises(ValueError, match=NOT_MAMBA),
        knockout(llama, KnockoutSpec((0,), (0,), (1,))),
    ):
        pass
