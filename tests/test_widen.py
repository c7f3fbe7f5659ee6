"""Widening the SSM state, and deepening (training/widen.py): the same function at step 0, room to learn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import save_tiny
from transformers import AutoModelForCausalLM

from lm_eval_ssmsteer.loading import resolve_model_path
from lm_eval_ssmsteer.training.widen import WidenError, deepen_layers, main, widen_state


def _logits(folder, ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def _new_c_rows(model, arch: str, old: int, new: int, grad: bool = False) -> list[torch.Tensor]:
    """The weight rows (or their gradients) that produce the new state dimensions' C, every layer."""
    rows = []
    for layer in model.backbone.layers:
        mixer = layer.mixer
        if arch == "mamba":
            w = mixer.x_proj.weight.grad if grad else mixer.x_proj.weight
            rows.append(w[-(new - old) :])
        else:
            w = mixer.in_proj.weight.grad if grad else mixer.in_proj.weight
            groups, d_inner = mixer.n_groups, mixer.intermediate_size
            c = w[2 * d_inner + groups * new : 2 * d_inner + 2 * groups * new]
            rows.append(c.reshape(groups, new, -1)[:, old:])
    return rows


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_widened_tiny_model_computes_the_same_and_can_learn(tmp_path, arch):
    src = save_tiny(tmp_path / "src", arch)
    record = widen_state(src, tmp_path / "wide", factor=2, seed=3)
    ids = torch.randint(1, 250, (2, 40), generator=torch.Generator().manual_seed(0))
    before, after = _logits(src, ids), _logits(tmp_path / "wide", ids)
    assert torch.allclose(before, after, atol=1e-6, rtol=0), float((before - after).abs().max())
    config = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert config["state_size"] == 16 and record["widened_state"]["state_size"] == [8, 16]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "wide", dtype=torch.float32).train()
    model(ids, labels=ids).loss.backward()
    weights, grads = _new_c_rows(model, arch, 8, 16), _new_c_rows(model, arch, 8, 16, grad=True)
    for rows, grad in zip(weights, grads, strict=True):
        assert float(rows.detach().abs().max()) == 0.0  # not read at step 0 ...
        assert float(grad.abs().max()) > 0.0  # ... but the loss pulls on them
    assert (tmp_path / "wide" / "tokenizer.json").is_file()


@pytest.mark.parametrize("name", ["ref-mamba1", "ref-mamba2"])
def test_widened_shipped_model_keeps_its_logits(tmp_path, name):
    src = Path(resolve_model_path(name))
    record = widen_state(src, tmp_path / "wide")
    ids = torch.randint(2, 120, (1, 96), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(src, ids), _logits(tmp_path / "wide", ids))
    assert record["init_record"]["arch"] == json.loads((src / "training.json").read_text())["arch"]
    assert (tmp_path / "wide" / "model.safetensors").stat().st_size < 10_000_000  # the 10 MB limit


def test_widen_rejects_bad_input(tmp_path, capsys):
    src = save_tiny(tmp_path / "src", "mamba")
    with pytest.raises(WidenError, match="factor=1"):
        widen_state(src, tmp_path / "a", factor=1)
    with pytest.raises(WidenError, match="b_scale=0"):
        widen_state(src, tmp_path / "a", b_scale=0)
    with pytest.raises(WidenError, match="exists"):
        widen_state(src, src)
    falcon = save_tiny(tmp_path / "falcon", "falcon_mamba")
    with pytest.raises(WidenError, match="model_type 'falcon_mamba'; allowed: mamba, mamba2"):
        widen_state(falcon, tmp_path / "b")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nowhere"), str(tmp_path / "c")])
    assert "needs config.json and model.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_deepened_tiny_model_computes_the_same_and_can_learn(tmp_path, arch):
    src = save_tiny(tmp_path / "src", arch)
    layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    record = deepen_layers(src, tmp_path / "deep", after=[0, layers - 1])
    ids = torch.randint(1, 250, (2, 40), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(src, ids), _logits(tmp_path / "deep", ids))
    assert record["deepened"]["num_hidden_layers"] == [layers, layers + 2]
    assert record["deepened"]["new_layers"] == [1, layers + 1]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "deep", dtype=torch.float32).train()
    assert len(model.backbone.layers) == layers + 2
    model(ids, labels=ids).loss.backward()
    for new in (1, layers + 1):
        out_proj = model.backbone.layers[new].mixer.out_proj.weight
        assert float(out_proj.detach().abs().max()) == 0.0  # adds nothing at step 0 ...
        assert float(out_proj.grad.abs().max()) > 0.0  # ... and the loss pulls on it
        # the rest of the new block is its source layer's copy
        old = model.backbone.layers[new - 1].mixer.in_proj.weight
        assert torch.equal(model.backbone.layers[new].mixer.in_proj.weight, old)
    assert (tmp_path / "deep" / "tokenizer.json").is_file()


@pytest.mark.parametrize("name,after", [("ref-mamba1", [0, 1, 2, 3, 4, 5]), ("ref-mamba2", [0, 1, 2, 3, 4])])
def test_deepened_shipped_model_keeps_its_logits(tmp_path, name, after):
    src = Path(resolve_model_path(name))
    record = deepen_layers(src, tmp_path / "deep", after)
    ids = torch.randint(2, 120, (1, 96), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(src, ids), _logits(tmp_path / "deep", ids))
    assert record["deepened"]["num_hidden_layers"] == [len(after), 2 * len(after)]
    assert record["init_record"]["arch"] == json.loads((src / "training.json").read_text())["arch"]


def test_deepen_rejects_bad_input(tmp_path, capsys):
    src = save_tiny(tmp_path / "src", "mamba")
    layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    for after in ([], [layers], [-1], [0, 0]):
        with pytest.raises(WidenError, match=f"distinct layer indices in 0..{layers - 1}"):
            deepen_layers(src, tmp_path / "a", after)
    with pytest.raises(WidenError, match="exists"):
        deepen_layers(src, src, [0])
    with pytest.raises(SystemExit):
        main([str(src), str(tmp_path / "b"), "--deepen", "0,x"])
    assert "comma-separated layer indices" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert main([str(src), str(tmp_path / "c"), "--deepen", "0"]) == 0
    assert f"{layers} -> {layers + 1} layers" in capsys.readouterr().out
