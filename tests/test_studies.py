"""The studies' small pure pieces (``lm_eval_ssmsteer.studies``): the needle found in a document, the
plant and its random control, the win-back and paired statistics, and the tables they print. The studies
themselves are long runs; docs/ says which command measured what."""

from __future__ import annotations

import argparse
import re

import pytest
import torch
from tiny import HYBRIDS, MAMBA_LAYERS, make_model, make_tokenizer

from lm_eval_ssmsteer.interpret.attention import hidden_attention
from lm_eval_ssmsteer.interpret.capture import capture_layers
from lm_eval_ssmsteer.interpret.latim import latim_maps
from lm_eval_ssmsteer.loading import load_model
from lm_eval_ssmsteer.mamba.arch import mamba_blocks
from lm_eval_ssmsteer.mamba.mixer_math import mixer_internals
from lm_eval_ssmsteer.studies.alignment import token_maps
from lm_eval_ssmsteer.studies.copy_task import aer, alignment_counts, analyse, markdown, write_figures
from lm_eval_ssmsteer.studies.damping import PLANT_SITES, control_channels, damp_weights, random_channels
from lm_eval_ssmsteer.studies.find_table import plant_name, win_back
from lm_eval_ssmsteer.studies.needle import TASKS as NEEDLE_TASKS
from lm_eval_ssmsteer.studies.needle import needle_span
from lm_eval_ssmsteer.studies.plant import fraction, parse_plant
from lm_eval_ssmsteer.studies.score_specs import paired, summary
from lm_eval_ssmsteer.studies.stable_eval import table
from lm_eval_ssmsteer.taskdata import generate


@pytest.mark.parametrize("task", NEEDLE_TASKS)
@pytest.mark.parametrize("length", [256, 1024])
def test_needle_span_is_the_whole_sentences_of_the_haystack_that_state_the_answer(task, length):
    for doc in generate(task, "test", 10, seed=3, length=length):
        context, answer = doc["context"], doc["target"]
        span = needle_span(context, answer)
        needle = context[span.start : span.stop]
        haystack = context[context.index("\n") + 1 : context.rindex("\n")]
        assert needle in haystack and needle[0].isupper() and needle.endswith(".")
        assert context[span.start - 1] == "\n" or context[span.start - 2 : span.start] == ". "
        assert needle.count(answer) == (2 if task == "ssm_passkey" else 1)
        outside = haystack.replace(needle, "")
        assert not re.search(r"\d", outside), "a digit outside the needle"


def test_needle_span_refuses_a_document_whose_haystack_lacks_the_answer():
    with pytest.raises(ValueError, match="not in the haystack"):
        needle_span("intro\nSome filler. More filler.\nWhat is it?", "12345")


def test_random_control_is_seed_0_unless_that_draw_is_the_plant():
    assert control_channels(16, 4) == (random_channels(16, 4, 0), 0)
    planted = random_channels(16, 4, 0)
    channels, seed = control_channels(16, 4, avoid=planted)
    assert seed == 1 and channels == random_channels(16, 4, 1) != planted


def test_random_control_refuses_a_plant_of_every_channel():
    with pytest.raises(ValueError, match="all 4 channels are planted"):
        control_channels(4, 4, avoid=[0, 1, 2, 3])


@pytest.mark.parametrize("site", PLANT_SITES)
def test_damping_scales_exactly_the_planted_channels_weights(site):
    model, _ = load_model("tiny-random-mamba")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    channels = damp_weights(model, 1, site, 3, 0.1, seed=2)
    mixer = mamba_blocks(model)[1].mixer
    prefix = "backbone.layers.1.mixer."
    if site == "delta":  # the bias moves so that Δ at zero input is 0.1 times its value
        name = prefix + "dt_proj.bias"
        changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
        assert changed == {name}
        delta = torch.nn.functional.softplus
        after = model.state_dict()[name]
        torch.testing.assert_close(delta(after[channels]), 0.1 * delta(before[name][channels]))
        others = [c for c in range(after.numel()) if c not in channels]
        assert torch.equal(after[others], before[name][others])
        return
    if site in ("mixer_out", "ssm_out"):
        name, rows = prefix + "out_proj.weight", channels
    elif site == "gate":
        name, rows = prefix + "in_proj.weight", [mixer.intermediate_size + c for c in channels]
    else:
        name = prefix + "x_proj.weight"
        rows = [mixer.time_step_rank + (mixer.ssm_state_size if site == "C" else 0) + c for c in channels]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {name}
    expected = before[name].clone()
    if site == "ssm_out":
        expected[:, rows] *= 0.1
    else:
        expected[rows] *= 0.1
    assert torch.equal(after[name], expected)


@pytest.mark.parametrize("site", PLANT_SITES)
def test_damping_a_mamba2_model_scales_the_weights_that_write_the_site(tmp_path, site):
    """Mamba-2: in_proj writes [z; x, B, C; dt], the conv reads [x, B, C], dt_bias is per head."""
    from tiny import save_tiny

    model, _ = load_model(str(save_tiny(tmp_path / "m2", "mamba2")))
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        intact = model(ids, use_cache=False).logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    channels = damp_weights(model, 1, site, 3, 0.1, seed=2)
    mixer = mamba_blocks(model)[1].mixer
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    prefix = "backbone.layers.1.mixer."
    d_inner, states = mixer.intermediate_size, mixer.n_groups * mixer.ssm_state_size
    with torch.no_grad():
        assert not torch.allclose(model(ids, use_cache=False).logits, intact, atol=1e-6)
    if site == "delta":
        name = prefix + "dt_bias"
        assert changed == {name}
        softplus = torch.nn.functional.softplus
        torch.testing.assert_close(softplus(after[name][channels]), 0.1 * softplus(before[name][channels]))
        return
    if site in ("B", "C"):
        rows = [d_inner + (states if site == "C" else 0) + c for c in channels]
        conv = {prefix + "conv1d.weight", prefix + "conv1d.bias"} & set(before)  # the bias: when it has one
        assert prefix + "conv1d.weight" in changed and changed <= conv
        for name in conv:
            expected = before[name].clone()
            expected[rows] *= 0.1
            assert torch.equal(after[name], expected)
        return
    name = prefix + ("in_proj.weight" if site == "gate" else "out_proj.weight")
    assert changed == {name}
    expected = before[name].clone()
    if site == "ssm_out":
        expected[:, channels] *= 0.1
    else:  # mixer_out: out_proj rows; gate: the z rows, in_proj's first d_inner
        expected[channels] *= 0.1
    assert torch.equal(after[name], expected)


def test_damping_refuses_a_site_it_cannot_reach_in_the_weights():
    model, _ = load_model("tiny-random-mamba")
    with pytest.raises(ValueError, match="site 'residual' cannot be damped"):
        damp_weights(model, 0, "residual", 2, 0.1, seed=0)


def test_win_back_is_the_share_of_the_gap_the_steered_row_closes():
    undamped, damped = {"a": (0.8, 0.0), "b": (0.6, 0.0)}, {"a": (0.4, 0.0), "b": (0.2, 0.0)}
    steered = {"a": (0.6, 0.0), "b": (0.4, 0.0)}
    result = win_back(undamped, damped, steered)
    assert result["fraction"] == pytest.approx(0.5) and result["stderr"] == 0.0
    assert win_back(damped, damped, steered) == {"gap": 0.0, "fraction": None, "stderr": None}


def test_plant_outputs_keep_the_first_protocols_name_unless_a_setting_changes():
    plant = argparse.Namespace(
        plant=1, plant_site="mixer_out", plant_channels=8, plant_scale=0.2, plant_seed=0
    )
    assert plant_name(plant) == "planted-L1"
    plant.plant_site, plant.plant_channels, plant.plant_scale, plant.plant_seed = "B", 4, 0.1, 10
    assert plant_name(plant) == "planted-L1-B-4x0.1-seed10"


def test_plant_argument_is_site_and_count():
    assert parse_plant("B:4") == ("B", 4) and parse_plant("delta:32") == ("delta", 32)
    for bad in ("B", "residual:4", "B:0", "B:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_plant(bad)


def test_fraction_of_damage_undone_is_none_without_damage():
    assert fraction(damped=2.0, intact=1.0, steered=1.5) == pytest.approx(0.5)
    assert fraction(damped=1.0, intact=1.0, steered=0.5) is None


def test_spec_scores_are_summarised_per_column_and_paired_per_document():
    base = {"ssm_vt|512|d1": 1.0, "ssm_vt|512|d2": 0.0, "ssm_vt|2048|d1": 1.0}
    other = {"ssm_vt|512|d1": 1.0, "ssm_vt|512|d2": 1.0, "ssm_vt|2048|d1": 0.0}
    assert summary(base) == {"vt@2048": (1.0, 0.0), "vt@512": (0.5, 0.5)}
    difference = paired(base, other)
    assert (difference["documents"], difference["mean"], difference["better"], difference["worse"]) == (
        3,
        0,
        1,
        1,
    )
    with pytest.raises(ValueError, match="different documents"):
        paired(base, {"ssm_vt|512|d1": 1.0})


def test_stable_table_is_mean_and_std_over_seeds_per_architecture():
    per_run = {"mamba-s0": {"t@1x": 0.5}, "mamba-s1": {"t@1x": 0.7}, "stable_mamba-s0": {"t@1x": 0.25}}
    assert table(per_run).splitlines() == [
        "| task @ length | mamba (n=2) | stable_mamba (n=1) |",
        "|---|---|---|",
        "| t@1x | 0.600 ± 0.141 | 0.250 ± 0.000 |",
    ]


def test_copy_alignment_counts_exact_and_same_letter_links():
    scores = torch.zeros(6, 6)
    scores[3, 0] = scores[4, 0] = scores[5, 2] = 1.0  # rows 3-5 copy "aab" from positions 0-2
    counts = alignment_counts(scores, rows=[3, 4, 5], sources=[0, 1, 2], s="aab")
    assert counts == {"links": 3, "sure": 2, "possible": 3}
    assert aer(counts) == pytest.approx(1 - 5 / 6)


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_copy_study_scores_latim_l2_alti_and_hidden_attention_on_both_architectures(arch, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = make_model(arch, n_layers=3).eval(), make_tokenizer()
    a = argparse.Namespace(n=2, seed=0, window=2, length=6, methods=["l2", "alti", "attention"])
    result, example = analyse(model, tokenizer, "tiny", a)
    assert result["methods"] == ["l2", "alti", "attention"]
    assert result["chance_accuracy"] == pytest.approx(1 / 6)
    for method in result["methods"]:
        for view in ("copied", "predicting"):
            columns = result["alignment"][method][view]
            # hidden attention has no residual term, so no rollout
            assert list(columns) == ["0", "1", "2", *(["rollout"] if method != "attention" else [])]
            assert all(0 <= c["accuracy"] <= 1 and 0 <= c["aer"] <= 1 for c in columns.values())
    table = markdown(result)
    assert "| hidden attention | predicting | accuracy |" in table and table.count("| LaTIM ALTI |") == 4
    write_figures(result, example, tmp_path)
    assert (tmp_path / "copy_tiny.json").is_file() and (tmp_path / "copy_tiny_alignment.png").is_file()

    # each map is the one its own function computes for that layer, from one shared capture
    ids = tokenizer("$abcab|abcab", return_tensors="pt").input_ids
    maps = token_maps(model, ids)
    captured = capture_layers(model, ids, [0, 1, 2])
    for layer, block in enumerate(mamba_blocks(model)):
        internals = mixer_internals(block.mixer, captured[layer].mixer_input)
        latim = latim_maps(internals, ("l2", "alti"))
        torch.testing.assert_close(maps["l2"][layer], latim["l2"], rtol=0, atol=0)
        torch.testing.assert_close(maps["alti"][layer], latim["alti"], rtol=0, atol=0)
        attention = hidden_attention(internals, "mean")
        torch.testing.assert_close(maps["attention"][layer], attention, rtol=0, atol=0)
    assert set(maps["attention"]) == {0, 1, 2} and "rollout" in maps["alti"]
    with pytest.raises(ValueError, match="not among l2, alti, attention"):
        token_maps(model, ids, ("grad",))


@pytest.mark.parametrize("family", HYBRIDS)
def test_copy_study_maps_a_hybrids_mamba_layers_and_knocks_out_over_every_layer(family, tmp_path):
    """On a hybrid: the maps are its Mamba layers' (decoder indices), each the one LaTIM / hidden attention
    computes for that mixer; no rollout (attention layers have no block map); knockout windows run over every
    decoder layer, attention ones included."""
    from lm_eval_ssmsteer.mamba.arch import describe_model, mamba_mixers

    torch.manual_seed(0)
    model, tokenizer = make_model(family).eval(), make_tokenizer()
    a = argparse.Namespace(n=2, seed=0, window=2, length=6, methods=["l2", "alti", "attention"])
    result, example = analyse(model, tokenizer, "tiny", a)
    expected = [str(layer) for layer in MAMBA_LAYERS[family]]
    for method in result["methods"]:
        for view in ("copied", "predicting"):
            assert list(result["alignment"][method][view]) == expected, (method, view)
    n_layers = describe_model(model).n_layers
    assert [row["layers"] for row in result["knockout"]] == [[i, i + 1] for i in range(n_layers - 1)]
    write_figures(result, example, tmp_path)
    assert (tmp_path / "copy_tiny_latim.png").is_file()

    ids = tokenizer("$abcab|abcab", return_tensors="pt").input_ids
    maps = token_maps(model, ids)
    mixers = mamba_mixers(model)
    captured = capture_layers(model, ids, list(mixers))
    for layer, mixer in mixers.items():
        internals = mixer_internals(mixer, captured[layer].mixer_input)
        latim = latim_maps(internals, ("l2", "alti"))
        torch.testing.assert_close(maps["l2"][layer], latim["l2"], rtol=0, atol=0)
        torch.testing.assert_close(maps["alti"][layer], latim["alti"], rtol=0, atol=0)
        attention = hidden_attention(internals, "mean")
        torch.testing.assert_close(maps["attention"][layer], attention, rtol=0, atol=0)
    assert set(maps["l2"]) == set(MAMBA_LAYERS[family])  # no "rollout"


@pytest.mark.parametrize("site", ["B", "C"])
def test_a_falconmamba_b_or_c_plant_is_steering_itself_since_no_weight_scales_them(site):
    """FalconMamba normalises B and C without a weight after x_proj (its norms' dummy weight is read on the
    kernel path only), so scaling x_proj rows or that weight damps nothing on the torch path: the plant goes
    through the steering hooks and equals steering the same channels at the same scale."""
    from lm_eval_ssmsteer.spec import SteeringSpec
    from lm_eval_ssmsteer.steering import steer
    from lm_eval_ssmsteer.studies.damping import plant

    ids = torch.randint(3, 250, (2, 16), generator=torch.Generator().manual_seed(0))
    model = make_model("falcon_mamba")
    with pytest.raises(ValueError, match="weightless RMS norms"):
        damp_weights(model, 1, site, 2, 0.1, seed=2)
    with torch.no_grad():
        intact = model(ids, use_cache=False).logits
        channels = plant(model, 1, site, 2, 0.1, seed=2)
        planted = model(ids, use_cache=False).logits
        fresh = make_model("falcon_mamba")
        with steer(fresh, SteeringSpec.single(layer=1, site=site, channels=channels, scale=0.1)):
            steered = fresh(ids, use_cache=False).logits
    assert not torch.allclose(planted, intact, atol=1e-5)
    assert torch.equal(planted, steered)
