"""``ssmsteer interpret attention|latim|knockout`` on tiny saved models: files written, numbers wired
from the library, bad input refused with exit code 2."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from tiny import make_tokenizer, save_tiny
from transformers import AutoModelForCausalLM

from lm_eval_ssmsteer.interpret import cli
from lm_eval_ssmsteer.interpret.capture import layer_internals
from lm_eval_ssmsteer.interpret.knockout import FEATURES
from lm_eval_ssmsteer.interpret.latim import latim_maps

pytest.importorskip("matplotlib")
TEXT = "copy: abcab | abcab"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["mamba", "mamba2"])
def model_dir(request, tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp(request.param), request.param)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ssmsteer")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["interpret", *argv])
    return args.func(args)


def test_latim_writes_maps_equal_to_the_library(model_dir, tmp_path):
    out = tmp_path / "latim"
    assert (
        run(
            "latim",
            "--model",
            str(model_dir),
            "--text",
            TEXT,
            "--layers",
            "0-1",
            "--rollout",
            "--out",
            str(out),
        )
        == 0
    )
    meta = json.loads((out / "latim.json").read_text())
    assert len(meta["tokens"]) == len(TEXT) and meta["tokens"][2] == "2:p" and meta["layers"] == [0, 1]
    arrays = np.load(out / "latim.npz")
    parts, scores = ("layer0", "layer1", "rollout"), ("l2", "alti")
    assert set(arrays) == {f"{part}_{score}" for part in parts for score in scores}
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = make_tokenizer()(TEXT, return_tensors="pt").input_ids
    expected = latim_maps(layer_internals(model, ids, [1])[1])["alti"]
    np.testing.assert_allclose(arrays["layer1_alti"], expected.numpy(), atol=1e-6)
    for name in ("latim_layer0_l2.png", "latim_layer1_alti.png", "latim_rollout_l2.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_attention_writes_aggregates_and_per_feature_matrices(model_dir, tmp_path):
    out = tmp_path / "attention"
    assert (
        run(
            "attention",
            "--model",
            str(model_dir),
            "--text",
            TEXT,
            "--layers",
            "-1",
            "--per-feature",
            "--out",
            str(out),
        )
        == 0
    )
    arrays = np.load(out / "attention.npz")
    n = len(TEXT)
    assert arrays["layer2_mean"].shape == (n, n) and arrays["layer2_norm"].shape == (n, n)
    per_feature = arrays["layer2_per_feature"]
    assert per_feature.shape[1:] == (n, n) and per_feature.shape[0] in (8, 64)  # heads | channels
    np.testing.assert_allclose(per_feature.mean(0), arrays["layer2_mean"], atol=1e-6)
    assert (out / "attention_layer2_norm.png").read_bytes()[:8] == PNG_MAGIC


def test_knockout_sweeps_windows_and_reports_each(model_dir, tmp_path, capsys):
    out = tmp_path / "knockout"
    text_file = tmp_path / "prompt.txt"
    text_file.write_text(TEXT)
    assert (
        run(
            "knockout",
            "--model",
            str(model_dir),
            "--text-file",
            str(text_file),
            "--sources",
            "6-10",
            "--window-size",
            "2",
            "--features",
            "all",
            "keep_slow",
            "--out",
            str(out),
        )
        == 0
    )
    record = json.loads((out / "knockout.json").read_text())
    results = record["results"]
    assert [(r["spec"]["layers"], r["spec"]["features"]) for r in results] == [
        ([0, 1], "all"),
        ([1, 2], "all"),
        ([0, 1], "keep_slow"),
        ([1, 2], "keep_slow"),
    ]
    assert record["feature_sets"] == {"all": FEATURES["all"], "keep_slow": FEATURES["keep_slow"]}
    assert "keeps its flow" in record["feature_sets"]["keep_slow"]
    assert all(r["spec"]["sources"] == [6, 7, 8, 9, 10] and r["position"] == len(TEXT) - 1 for r in results)
    assert all(r["argmax_hit_base"] for r in results)
    assert (out / "knockout.png").read_bytes()[:8] == PNG_MAGIC
    assert "layers 1-2 features=keep_slow: p=" in capsys.readouterr().out


def test_knockout_window_defaults_to_the_whole_of_a_shallow_model_and_names_the_target(
    model_dir, tmp_path, capsys
):
    argv = ("--model", str(model_dir), "--text", TEXT, "--sources", "6-10", "--out", str(tmp_path))
    assert run("knockout", *argv) == 0
    out = capsys.readouterr().out
    assert "window: 3 layers (the model has 3; the paper's default is 9)" in out
    record = json.loads((tmp_path / "knockout.json").read_text())
    assert [r["spec"]["layers"] for r in record["results"]] == [[0, 1, 2]]
    target = record["results"][0]["target_token"]
    text = make_tokenizer().decode([target])
    assert record["target_token_text"] == text
    assert f"target token: id {target} {text!r} (the unintervened prediction at position 18)" in out


@pytest.mark.parametrize("old", ["fast", "slow"])
def test_knockout_refuses_the_ambiguous_old_feature_names(model_dir, tmp_path, capsys, old):
    argv = ("--model", str(model_dir), "--text", TEXT, "--sources", "1", "--out", str(tmp_path))
    with pytest.raises(SystemExit) as refused:
        run("knockout", *argv, "--features", "all", old)
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert f"features '{old}' is ambiguous: use knock_{old}" in error and f"keep_{old}" in error
    assert not (tmp_path / "knockout.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["latim", "--layers", "3"], "layer 3 does not exist: the model has 3 layers (0-2)"),
        (["knockout", "--sources", "40"], "source token index 40 is out of range: the input has 19 tokens"),
        (["knockout", "--sources", "1", "--window-size", "0"], "the layer window is empty"),
        (
            ["knockout", "--sources", "1", "--window-size", "2", "--window-start", "2"],
            "window of 2 layers starting at 2 goes past the last layer 2",
        ),
        (["knockout", "--sources", "1", "--position", "-20"], "prediction token index -20 is out of range"),
    ],
)
def test_bad_input_exits_2_naming_the_value_and_range(model_dir, tmp_path, capsys, argv, message):
    assert run(*argv[:1], "--model", str(model_dir), "--text", TEXT, "--out", str(tmp_path), *argv[1:]) == 2
    assert message in capsys.readouterr().err


def test_a_non_mamba_model_is_refused(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=260, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    make_tokenizer().save_pretrained(tmp_path / "llama")
    assert run("attention", "--model", str(tmp_path / "llama"), "--text", TEXT, "--out", str(tmp_path)) == 2
    assert (
        "LlamaForCausalLM (model_type 'llama') is not a supported Mamba-family model"
        in capsys.readouterr().err
    )


def test_index_lists_parse_ranges_and_negatives():
    assert cli.parse_indices("0,3-5,-1", "--layers") == [0, 3, 4, 5, -1]
    with pytest.raises(argparse.ArgumentTypeError, match="'5-3'"):
        cli.parse_indices("5-3", "--layers")
