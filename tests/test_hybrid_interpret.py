"""Interpreting the Mamba layers of hybrids (tiny random configs): the mixer math, hidden attention and
LaTIM reproduce each family's Mamba mixer; knockout blocks SSM and attention edges, and blocking every
edge from the sources equals running the model without them."""

from __future__ import annotations

import pytest
import torch
from tiny import FALCON_H1_MULTIPLIERS, HYBRIDS, MAMBA_LAYERS, make_model
from transformers import AutoModelForCausalLM

from lm_eval_ssmsteer.interpret.attention import scan_from_attention
from lm_eval_ssmsteer.interpret.capture import capture_layers, layer_internals
from lm_eval_ssmsteer.interpret.knockout import KnockoutSpec, knockout
from lm_eval_ssmsteer.interpret.latim import iter_contributions
from lm_eval_ssmsteer.mamba.arch import layer_kind
from lm_eval_ssmsteer.mamba.hybrid_configs import hybrid_config, make_ssm_visible
from lm_eval_ssmsteer.mamba.mixer_math import readout

LENGTH = 12
FALCON_NORMS = {  # Falcon-H1's three readouts
    "no_norm": {},
    "gated_norm": {"mamba_rms_norm": True, "mamba_norm_before_gate": False},
    "norm_then_gate": {"mamba_rms_norm": True, "mamba_norm_before_gate": True},
}


def _ids(seed=1, length=LENGTH):
    return torch.randint(1, 250, (1, length), generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=HYBRIDS)
def model(request):
    return make_model(request.param, seed=1)


def _falcon_h1(norm: str, **overrides):
    config = hybrid_config("falcon_h1", 3, **FALCON_H1_MULTIPLIERS, **FALCON_NORMS[norm], **overrides)
    torch.manual_seed(3)
    return make_ssm_visible(AutoModelForCausalLM.from_config(config), seed=3).eval()


def _check_mixer_math(model):
    ids = _ids()
    layers = MAMBA_LAYERS.get(model.config.model_type, (0, 1, 2))
    captured = capture_layers(model, ids, layers)
    internals = layer_internals(model, ids, layers)
    for layer in layers:
        real = captured[layer].mixer_output
        assert _rel(internals[layer].output, real) < 1e-5, layer
        y = scan_from_attention(internals[layer], memory_bytes=30_000)  # hidden attention
        assert _rel(y, internals[layer].y[0]) < 1e-5
        assert _rel(readout(internals[layer], y[None])[1], real) < 1e-5
        total = torch.zeros_like(real[0])  # LaTIM: per-source contributions sum to the output
        for rows, T, bias in iter_contributions(internals[layer], memory_bytes=40_000):
            total[rows.start : rows.stop] = T.sum(1) + bias
        assert _rel(total, real[0]) < 1e-5, layer


def test_mixer_math_hidden_attention_and_latim_reproduce_every_mamba_layer(model):
    _check_mixer_math(model)


@pytest.mark.parametrize("norm", FALCON_NORMS)
def test_falcon_h1_mixer_math_follows_each_readout(norm):
    _check_mixer_math(_falcon_h1(norm))


def test_interpret_refuses_a_layer_without_mamba(model):
    plain = [i for i in range(len(model.base_model.layers)) if "mamba" not in layer_kind(model, i)]
    if not plain:
        return  # Falcon-H1, Zamba2: every layer holds a Mamba mixer
    listed = ", ".join(map(str, MAMBA_LAYERS[model.config.model_type]))
    with pytest.raises(
        ValueError, match=rf"layer {plain[0]} has no Mamba mixer .*Mamba layers are {listed}$"
    ):
        capture_layers(model, _ids(), [plain[0]])


@torch.no_grad()
def test_knockout_of_an_attention_layer_blocks_its_edges_and_nothing_else(model):
    attention = [i for i in range(len(model.base_model.layers)) if "attention" in layer_kind(model, i)]
    layer = attention[0]
    ids = _ids(seed=4)
    base = model(ids, use_cache=False).logits
    with knockout(model, KnockoutSpec((layer,), sources=(1, 2, 3), targets=(8, 9, 10, 11))):
        knocked = model(ids, use_cache=False).logits
    assert torch.equal(knocked[:, :8], base[:, :8])  # positions that are not targets are untouched
    assert _rel(knocked[:, 8:], base[:, 8:]) > 1e-5  # float noise here is ~1e-7
    # sources after every target: causality already blocks those edges, so nothing changes
    with knockout(model, KnockoutSpec((layer,), sources=(10, 11), targets=(4, 5))):
        assert _rel(model(ids, use_cache=False).logits, base) < 1e-6


def _one_tap(arch: str):
    """A tiny hybrid whose causal conv has one tap: no source leaks into later positions through it."""
    key = "conv_kernel" if arch == "nemotron_h" else "mamba_d_conv"
    extra = {"mlp": [3]} if arch == "nemotron_h" else {}
    n_layers = 4 if arch == "nemotron_h" else 3
    config = hybrid_config(arch, n_layers, attention=[1], **extra, **{key: 1})
    torch.manual_seed(5)
    return make_ssm_visible(AutoModelForCausalLM.from_config(config), seed=5).eval()


@pytest.mark.parametrize("arch", HYBRIDS)
@torch.no_grad()
def test_knocking_out_every_edge_from_the_sources_equals_removing_them(arch):
    """Blocking every edge from the first k tokens to the later ones, in every layer (SSM and attention),
    gives the later tokens what the model computes on them alone: their states start empty, attention
    sees only them (rotary attention depends on relative positions only)."""
    model = _one_tap(arch)
    ids, k = _ids(seed=6), 4
    everything = tuple(range(len(model.base_model.layers)))
    spec = KnockoutSpec(everything, sources=tuple(range(k)), targets=tuple(range(k, LENGTH)))
    with knockout(model, spec):
        knocked = model(ids, use_cache=False).logits[:, k:]
    alone = model(ids[:, k:], use_cache=False).logits
    with_sources = model(ids, use_cache=False).logits[:, k:]
    assert _rel(with_sources, alone) > 1e-4, "the sources did not matter: the test could not fail"
    assert _rel(knocked, alone) < 1e-5


def test_interpret_cli_on_a_hybrid_folder(tmp_path, capsys):
    import json

    from tiny import save_tiny

    from lm_eval_ssmsteer.cli import main

    folder = save_tiny(tmp_path / "granite", "granitemoehybrid", seed=2)
    common = ["--model", str(folder), "--text", "the cat sat on the mat", "--out"]
    assert main(["interpret", "knockout", *common, str(tmp_path / "k"), "--sources", "0-3"]) == 0
    record = json.loads((tmp_path / "k" / "knockout.json").read_text())
    assert record["mamba_layers"] == [0, 2] and record["results"][0]["spec"]["layers"] == [0, 1, 2]
    assert main(["interpret", "attention", *common, str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "attention.json").read_text())["layers"] == [0, 2]
    assert main(["interpret", "latim", *common, str(tmp_path / "l"), "--layers", "1"]) == 2
    assert "layer 1 has no Mamba mixer (an attention or MLP layer); the Mamba layers are 0, 2" in (
        capsys.readouterr().err
    )
