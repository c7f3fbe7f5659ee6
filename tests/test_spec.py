"""The steering spec: round-trip, hashing, presets, and errors that name field, value and allowed."""

from __future__ import annotations

import json
import math

import pytest
from tiny import make_model

from lm_eval_ssmsteer.mamba.arch import UnsupportedModelError, describe_model
from lm_eval_ssmsteer.spec import PRESETS, SpecError, SteeringSpec, load_spec
from lm_eval_ssmsteer.steering.plan import resolve

DOC = {
    "version": 1,
    "interventions": [
        {"layer": [0, 2], "site": "mixer_out", "channels": [4, 7], "scale": 5.0, "positions": "all"},
        {"layer": "all", "site": "delta", "channels": "all", "scale": 1.5, "positions": "generated"},
    ],
    "model": {"architecture": "mamba", "n_layers": 3},
    "provenance": {"method": "test"},
}


def test_round_trip_is_exact(tmp_path):
    spec = SteeringSpec.from_dict(DOC)
    assert spec.to_dict() == DOC
    path = tmp_path / "spec.json"
    spec.save(path)
    assert load_spec(str(path)) == spec
    assert load_spec(json.dumps(DOC)) == spec


def test_hash_covers_behaviour_not_provenance():
    a = SteeringSpec.from_dict(DOC)
    b = SteeringSpec.from_dict({**DOC, "provenance": {"other": 1}})
    c = SteeringSpec.from_dict({**DOC, "interventions": [{**DOC["interventions"][0], "scale": 4.0}]})
    assert a.sha256 == b.sha256 != c.sha256
    assert len(a.sha256) == 64


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"site": "conv"}, "site='conv' is not a known site; allowed: mixer_out, residual, delta, B, C"),
        ({"scale": math.nan}, "scale: must be a finite number, got nan"),
        ({"scale": math.inf}, "scale: must be a finite number, got inf"),
        ({"scale": "big"}, "scale: must be a number"),
        ({"scale": -0.5}, "scale: -0.5 on site 'delta' is not allowed: Δ is a step size and must stay >= 0"),
        ({"positions": "middle"}, "positions: 'middle' is not allowed; allowed: all, prompt, generated"),
        ({"layer": -1}, "layer: index -1 is negative"),
        ({"channels": []}, "channels: must be an integer, a non-empty list"),
        ({"channels": [1, 1]}, "repeated indices"),
        ({"colour": "red"}, "unknown key(s) ['colour']"),
    ],
)
def test_bad_intervention_fields_name_field_value_and_allowed(patch, message):
    doc = {"version": 1, "interventions": [{"layer": 0, "site": "delta", "scale": 2.0, **patch}]}
    with pytest.raises(SpecError) as err:
        SteeringSpec.from_dict(doc)
    assert message in str(err.value)


def test_malformed_json_and_unknown_top_level_keys():
    with pytest.raises(SpecError, match="malformed JSON"):
        SteeringSpec.from_json("{not json")
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['extras'\]"):
        SteeringSpec.from_dict({**DOC, "extras": 1})
    with pytest.raises(SpecError, match="version=2 is not supported"):
        SteeringSpec.from_dict({**DOC, "version": 2})
    with pytest.raises(SpecError, match="neither a preset"):
        load_spec("no-such-preset-or-file")


def test_ranges_are_checked_against_the_model():
    arch = describe_model(make_model("mamba"))
    with pytest.raises(SpecError, match=r"layer 3 does not exist: the model has 3 layers \(0-2\)"):
        resolve(SteeringSpec.single(layer=3, site="delta", scale=2.0), arch)
    with pytest.raises(SpecError, match=r"channel 8 is out of range for site 'B' .* 8 channels \(0-7\)"):
        resolve(SteeringSpec.single(layer=0, site="B", channels=[8], scale=2.0), arch)
    m2 = describe_model(make_model("mamba2"))
    with pytest.raises(SpecError, match=r"site 'delta' on Mamba2ForCausalLM: it has 8 channels"):
        resolve(SteeringSpec.single(layer=0, site="delta", channels=[8], scale=2.0), m2)


def test_presets_fit_mamba_130m_and_refuse_other_shapes():
    arch = describe_model(make_model("mamba"))
    for name in PRESETS:
        spec = load_spec(name)
        with pytest.raises(
            SpecError, match="made for state-spaces/mamba-130m-hf .*n_layers: spec 24, model 3"
        ):
            resolve(spec, arch)
    paper = load_spec("paper-mamba-130m").interventions[0]
    assert paper.layers == (20,) and paper.site == "mixer_out" and paper.scale == 5.0
    assert paper.channels == (4, 38, 84, 94, 163, 171, 268, 363, 401, 497, 564, 568, 582, 654, 659, 686)


def test_non_mamba_model_lists_supported_architectures():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(
        UnsupportedModelError,
        match=r"GPT2LMHeadModel \(model_type 'gpt2'\) is not a supported .*MambaForCausalLM",
    ):
        describe_model(gpt2)


def test_spec_cli_shows_hash_and_checks_against_a_model(tmp_path, capsys):
    from tiny import save_tiny

    from lm_eval_ssmsteer.cli import main

    folder = save_tiny(tmp_path / "m", "mamba")
    assert main(["spec", "show", "paper-mamba-130m"]) == 0
    assert load_spec("paper-mamba-130m").sha256 in capsys.readouterr().out
    assert main(["spec", "check", "paper-mamba-130m", "--model", str(folder)]) == 2
    assert "n_layers: spec 24, model 3" in capsys.readouterr().out
    small = json.dumps({"version": 1, "interventions": [{"layer": 2, "site": "B", "scale": 2.0}]})
    assert main(["spec", "check", small, "--model", str(folder)]) == 0


def _spec_naming(model: str | None) -> str:
    doc = {"version": 1, "interventions": [{"layer": 2, "site": "B", "scale": 2.0}]}
    if model is not None:
        doc["model"] = {"architecture": "mamba", "n_layers": 3, "name": model}
    return json.dumps(doc)


def test_spec_check_takes_the_model_from_the_spec_else_requires_model(capsys):
    from lm_eval_ssmsteer.cli import main

    assert main(["spec", "check", _spec_naming("tiny-random-mamba")]) == 0
    out = capsys.readouterr().out
    assert "model: tiny-random-mamba (the spec's model.name)" in out
    assert "ok: 1 (layer, site) interventions fit tiny-random-mamba" in out
    assert main(["spec", "check", _spec_naming(None)]) == 2
    assert "error: the spec names no model (its 'model' block has no 'name'); pass --model" in (
        capsys.readouterr().out
    )
    assert main(["spec", "check", _spec_naming(None), "--model", "./no/such/folder"]) == 2
    assert (
        "--model='./no/such/folder': no such folder; allowed: an existing model folder"
        in capsys.readouterr().out
    )


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty hub cache, no proxy, and a failed test if anything is loaded or connected to."""
    import socket
    import urllib.request

    from huggingface_hub import constants

    from lm_eval_ssmsteer import loading

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(urllib.request, "getproxies", dict)
    monkeypatch.setattr(loading, "convert_native_checkpoint", lambda *a: pytest.fail("tried to load a model"))
    return monkeypatch, socket, constants


def test_spec_check_of_an_uncached_hub_id_fails_at_once_when_offline(no_hub, capsys):
    from lm_eval_ssmsteer.cli import main

    monkeypatch, socket, constants = no_hub
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed the network"))
    assert main(["spec", "check", _spec_naming("nobody/uncached-mamba")]) == 2
    assert (
        "error: the spec's model.name='nobody/uncached-mamba': a Hugging Face hub id that is not in the "
        "local cache, and the hub is offline (HF_HUB_OFFLINE is set); allowed offline: an existing model"
    ) in capsys.readouterr().out


def test_spec_check_of_an_uncached_hub_id_fails_at_once_without_network(no_hub, capsys):
    from lm_eval_ssmsteer.cli import main

    monkeypatch, socket, constants = no_hub
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def unreachable(address, timeout):
        assert address == ("huggingface.co", 443) and timeout <= 3
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    assert main(["spec", "check", "paper-mamba-130m"]) == 2
    out = capsys.readouterr().out
    assert "model: state-spaces/mamba-130m-hf (the spec's model.name)" in out
    assert "the hub is offline (huggingface.co cannot be reached)" in out


def test_spec_check_offline_reads_a_cached_hub_model_from_its_snapshot_folder(no_hub, tmp_path, capsys):
    from lm_eval_ssmsteer import loading
    from lm_eval_ssmsteer.cli import main

    monkeypatch, _, constants = no_hub
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = tmp_path / "hub" / "models--someone--tiny-mamba"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(
        (loading.MODELS_DIR / "tiny-random-mamba" / "config.json").read_text()
    )
    assert main(["spec", "check", _spec_naming("someone/tiny-mamba")]) == 0
    assert "ok: 1 (layer, site) interventions fit someone/tiny-mamba" in capsys.readouterr().out
