"""Loading: native mamba-ssm checkpoints convert to the same transformers model; short names resolve."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import make_model

from lm_eval_ssmsteer.loading import prepare_pretrained, resolve_model_path, shipped_models


def _write_native(model, folder, layer: str) -> None:
    """A checkpoint laid out the way mamba-ssm's save_pretrained writes one."""
    cfg = model.config
    ssm_cfg = {"layer": layer, "d_state": cfg.state_size, "d_conv": cfg.conv_kernel, "expand": cfg.expand}
    if layer == "Mamba2":
        ssm_cfg |= {"headdim": cfg.head_dim, "ngroups": cfg.n_groups, "chunk_size": cfg.chunk_size}
    native = {
        "d_model": cfg.hidden_size,
        "n_layer": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
        "ssm_cfg": ssm_cfg,
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 4,
        "tie_embeddings": cfg.tie_word_embeddings,
    }
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(native))
    state = {
        k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in model.state_dict().items()
    }
    torch.save(state, folder / "pytorch_model.bin")


def test_native_checkpoints_convert_to_identical_models(tmp_path):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(1, 250, (2, 9))
    for arch, layer in (("mamba", "Mamba1"), ("mamba2", "Mamba2")):
        model = make_model(arch, seed=4)
        src = tmp_path / f"native-{arch}"
        _write_native(model, src, layer)
        path, native = prepare_pretrained(str(src), cache_dir=tmp_path / "cache")
        assert native
        converted = AutoModelForCausalLM.from_pretrained(path).eval()
        assert converted.config.model_type == arch
        with torch.no_grad():
            assert torch.equal(converted(ids).logits, model(ids).logits)
        assert prepare_pretrained(str(src), cache_dir=tmp_path / "cache") == (path, True)  # cached


def test_shipped_models_resolve_by_short_name():
    shipped = shipped_models()
    assert "tiny-random-mamba" in shipped
    assert resolve_model_path("tiny-random-mamba") == str(shipped["tiny-random-mamba"])
    assert resolve_model_path("state-spaces/mamba-130m-hf") == "state-spaces/mamba-130m-hf"


def test_an_uncached_hub_id_fails_at_once_when_the_hub_is_offline(monkeypatch, tmp_path):
    import time

    from huggingface_hub import constants

    from lm_eval_ssmsteer.loading import ModelNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=r"pretrained='nobody/uncached': a Hugging Face hub id that"):
        prepare_pretrained("nobody/uncached")
    assert time.perf_counter() - start < 1.0
