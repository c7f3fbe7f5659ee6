"""Mistakes in mamba-steered's model_args fail before any model loads, in one sentence that names the
field, the value and what is allowed; everything HFLM and transformers take still passes."""

from __future__ import annotations

import pytest
import torch

from lm_eval_ssmsteer.lmeval.model_args import DTYPES, ModelArgsError, check_dtype, check_model_args
from lm_eval_ssmsteer.loading import ModelNotFoundError, check_model_name, load_model

ALLOWED_NAMES = (
    "allowed: an existing model folder, a shipped model (ref-bamba, ref-mamba1, ref-mamba1-v1, ref-mamba2, "
    "tiny-random-mamba) "
    "or a hub id"
)


@pytest.mark.parametrize(
    "name",
    ["gpt2", "state-spaces/mamba-130m-hf", "EleutherAI/gpt-neox-20b", "ref-mamba1", "tiny-random-mamba"],
)
def test_shipped_names_and_hub_ids_pass(name):
    check_model_name(name)


def test_an_existing_folder_passes(tmp_path):
    check_model_name(str(tmp_path))


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("{tmp}/x/does-not-exist", "no such folder"),
        ("./does-not-exist", "no such folder"),
        ("~/ssmsteer-does-not-exist", "no such folder"),
        ("models/mamba/does-not-exist", "no such folder"),
        ("{tmp}/weights.bin", "not a folder"),
        ("mamba 130m", "not a folder, a shipped model or a hub id"),
        ("state-spaces/mamba--130m", "not a folder, a shipped model or a hub id"),
    ],
)
def test_bad_model_names_say_why_and_what_is_allowed(name, problem, tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    name = name.format(tmp=tmp_path)
    with pytest.raises(ModelNotFoundError) as raised:
        check_model_name(name)
    assert str(raised.value).startswith(f"pretrained={name!r}: {problem}; {ALLOWED_NAMES}")


def test_a_missing_model_is_an_oserror_before_anything_loads(tmp_path):
    # `ssmsteer find` and `ssmsteer spec check` report OSError as their one-line error
    with pytest.raises(OSError, match="no such folder"):
        load_model(str(tmp_path / "x" / "does-not-exist"))


def test_dtype_names_are_the_ones_torch_and_hflm_take():
    for name, same_as in DTYPES.items():
        if name != "auto":
            assert getattr(torch, name) is getattr(torch, same_as)
    for dtype in (*DTYPES, None, torch.bfloat16):
        check_dtype(dtype)


def test_an_unknown_dtype_names_the_allowed_ones():
    with pytest.raises(ModelArgsError) as raised:
        check_dtype("float33")
    assert str(raised.value) == (
        "dtype='float33': not a dtype for this model; allowed: auto, float32, float (= float32), "
        "float16, half (= float16), bfloat16"
    )


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("steer_positons", "did you mean 'steer_positions'? "),
        ("steer_sclae", "did you mean 'steer_scale'? "),
        ("stear_layer", "did you mean 'steer_layer'? "),
        ("steering_file", ""),
    ],
)
def test_a_misspelt_steering_key_is_named_before_the_shorthand_is_read(key, hint):
    # without the check, the shorthand would complain that steer_scale is missing, or HFLM would hand
    # the key to the model's constructor
    with pytest.raises(ModelArgsError) as raised:
        check_model_args({"steer_layer": 1, "steer_site": "delta", "steer_scale": 2, key: 2})
    assert str(raised.value) == (
        f"{key}=2: not a model argument of mamba-steered; {hint}the steering arguments are steer, "
        "steer_layer, steer_site, steer_channels, steer_scale, steer_positions"
    )


def test_hflm_and_transformers_arguments_pass_and_the_spec_comes_back():
    spec = check_model_args(
        {
            "pretrained": "tiny-random-mamba",
            "dtype": "bfloat16",
            "revision": "main",
            "attn_implementation": "eager",
            "trust_remote_code": True,
            "batch_size": 4,
            "steer_layer": 1,
            "steer_site": "delta",
            "steer_scale": 2,
            "steer_positions": None,  # the backend's default: not given
        }
    )
    assert (spec.interventions[0].layers, spec.interventions[0].scale) == ((1,), 2.0)


def test_the_backend_checks_before_loading(tmp_path):
    from lm_eval_ssmsteer.lmeval.backend import MambaSteeredLM

    with pytest.raises(ModelArgsError, match="dtype='float33'"):
        MambaSteeredLM(pretrained="tiny-random-mamba", device="cpu", dtype="float33")
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        MambaSteeredLM(pretrained=str(tmp_path / "x" / "does-not-exist"), device="cpu")
