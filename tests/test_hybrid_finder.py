"""The bottleneck finder over a hybrid's Mamba layers (tiny random configs): it scores only the Mamba
layers and `ssmsteer find` runs on a hybrid folder (tests/test_finder.py checks the attribution gradient
against real steering on the hybrids too)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import HYBRIDS, MAMBA_LAYERS, make_model, save_tiny

from lm_eval_ssmsteer.finder import CalibrationData, find
from lm_eval_ssmsteer.mamba.arch import describe_model
from lm_eval_ssmsteer.spec import load_spec
from lm_eval_ssmsteer.steering.plan import resolve


def _docs(n: int, seed: int = 0) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(1, 250, (16,), generator=g).tolist(), 12) for _ in range(n)]


@pytest.mark.parametrize("arch", HYBRIDS)
@pytest.mark.parametrize("method", ["attribution", "variance", "dt-bias"])
def test_find_searches_only_the_mamba_layers(arch, method):
    model = make_model(arch, seed=1)
    data = CalibrationData.from_ids(_docs(8), "random ids")
    result = find(model, data, sites=["mixer_out", "residual", "delta"], method=method, progress=False)
    resolve(result.spec, describe_model(model))  # the spec fits the model (its layers hold Mamba mixers)
    scored = {int(pair.split("/")[0]) for pair in result.scores["pairs"]}
    assert scored <= set(MAMBA_LAYERS[arch])
    if method != "dt-bias":
        assert scored == set(MAMBA_LAYERS[arch])
    assert result.best.loss <= result.base.loss
    for point in result.scores["sweep"]:
        assert point["layer"] in MAMBA_LAYERS[arch]


def test_find_command_on_a_hybrid_folder(tmp_path, capsys):
    from lm_eval_ssmsteer.cli import main

    folder = save_tiny(tmp_path / "bamba", "bamba", seed=1)
    data = tmp_path / "calibration.jsonl"
    data.write_text(
        "".join(json.dumps({"context": f"key {i} is", "answer": f"v{i % 5}"}) + "\n" for i in range(8))
    )
    out = tmp_path / "found.json"
    args = ["find", "--model", str(folder), "--out", str(out), "--data", str(data), "--no-progress"]
    assert main([*args, "--sites", "mixer_out", "B", "--method", "attribution"]) == 0, capsys.readouterr().out
    load_spec(str(out))
    scores = json.loads((tmp_path / "found.scores.json").read_text())
    assert set(scores["pairs"]) == {f"{layer}/{site}" for layer in (0, 2) for site in ("mixer_out", "B")}
