"""scripts/survey_overfit.py rebuilds a survey plant and scores its found spec beside the intact and damaged
model on the find's own documents and on TEST; scripts/site_balance.py prints its fits and, at a planted
ssm_out or gate layer, each read's low outliers (its robust line is ``finder.magnitude.robust_line``:
tests/test_finder_balance.py)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from lm_eval_ssmsteer.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


overfit = _script("survey_overfit")


def test_it_rebuilds_the_surveys_plant_and_scores_its_spec_on_every_document_set(tmp_path, capsys):
    out = tmp_path / "survey"
    args = ["study", "survey", "--model", "tiny-random-mamba", "--out", str(out), "--plants", "D01",
            "--tasks", "ssm_passkey", "--lengths", "256", "--test-docs", "8", "--docs-per-task", "8",
            "--finds", "causal"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    record = json.loads((out / "plants" / "D01.json").read_text())
    assert overfit.main([str(out), "D01"]) == 0
    printed = capsys.readouterr().out
    rows = {
        m.group(1): [int(n) for n in re.findall(r"(\d+) of \d+", m.group(2))]
        for m in re.finditer(r"^\| (intact|damaged|planted x8|found) \|(.*)$", printed, re.M)
    }
    assert set(rows) == {"intact", "damaged", "planted x8", "found"}
    assert all(len(r) == 3 for r in rows.values())  # calibration, validation, TEST
    test_docs = record["test_documents"]
    # the TEST column reproduces the survey's intact and damaged accuracy: the same plant and documents
    assert rows["intact"][2] == round(record["intact"]["accuracy"] * test_docs)
    assert rows["damaged"][2] == round(record["damaged"]["accuracy"] * test_docs)
    with pytest.raises(SystemExit):
        overfit.main([str(out), "D01", "--find", "nope"])
    with pytest.raises(SystemExit):
        overfit.main([str(out), "D99"])


def test_site_balance_prints_the_fits_and_each_reads_outliers_at_a_planted_layer(capsys):
    balance = _script("site_balance")
    assert balance.main(["--model", "tiny-random-mamba", "--plant", "D16"]) == 0
    out = capsys.readouterr().out
    plant = re.search(r"plant D16: L(\d+) (\w+) (\d+) x", out)
    assert plant and plant.group(2) in ("ssm_out", "gate"), out
    layer, count = int(plant.group(1)), int(plant.group(3))
    fit = r"(column on RMS|RMS on column)"
    rows = re.findall(rf"\| {layer} \| [-0-9.]+ \| {fit} \|.* \| (\d+) of {count} \|", out)
    assert [name for name, _ in rows] == ["column on RMS", "RMS on column"]
    reads = re.findall(rf"\| (y\S*) \| (\d+), (\d+) of {count} \| (\d+), (\d+) of {count} \|", out)
    assert [r[0] for r in reads] == ["y"]  # Mamba-1: no gated norm, so no product read
    for _, flagged, planted, flagged_b, planted_b in reads:
        assert int(planted) <= int(flagged) and int(planted_b) <= int(flagged_b)
