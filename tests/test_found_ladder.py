"""scripts/found_ladder.py: it rebuilds a survey plant and the find's documents, so the written spec at its
own scale scores what the survey recorded (calibration loss, TEST accuracy), and at other scales the same
channels are scaled; bad plant or find names stop with the reason."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lm_eval_ssmsteer.cli import main

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("found_ladder", ROOT / "scripts" / "found_ladder.py")
ladder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ladder)


def test_the_written_scale_reproduces_the_survey_and_other_scales_scale_the_same_channels(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "survey"
    args = ["study", "survey", "--model", "tiny-random-mamba", "--out", str(out), "--plants", "D01",
            "--tasks", "ssm_passkey", "--lengths", "256", "--test-docs", "8", "--docs-per-task", "8",
            "--finds", "outlier"]  # fmt: skip
    # the default find, named by every option that is on
    name = "outlier:validate=6:choice=paired:narrow=64:narrow_floor=4:grow=3"
    assert main(args) == 0
    capsys.readouterr()
    record = json.loads((out / "plants" / "D01.json").read_text())
    found = record["finds"][name]
    assert found["written"], "the tiny random model's outlier find writes a spec (a fixed seed)"
    written = found["found"]["scale"]
    rows_file = tmp_path / "ladder.json"
    assert ladder.main([str(out), "--find", name, "--plants", "D01", "--scales", str(written), "2",
                        "--out", str(rows_file)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    rows = json.loads(rows_file.read_text())
    assert [r["scale"] for r in rows] == [None, written, 2.0]
    damaged, at_written, at_two = rows
    assert damaged["test accuracy"] == pytest.approx(record["damaged"]["accuracy"])
    assert damaged["calibration loss"] == pytest.approx(found["calibration_loss"]["damaged"], rel=1e-5)
    assert at_written["calibration loss"] == pytest.approx(found["calibration_loss"]["steered"], rel=1e-5)
    assert at_written["test accuracy"] == pytest.approx(found["steered"]["accuracy"])
    assert at_written["win-back"] == found["steered"]["win_back"]["value"]
    assert at_two["calibration loss"] != at_written["calibration loss"]  # the scale reached the model
    assert "| D01 |" in printed and f"x{written:g} (written)" in printed
    # bad names stop before the model loads, even after a good one
    monkeypatch.setattr(ladder, "rebuild_survey", lambda *a: pytest.fail("the model loaded"))
    with pytest.raises(SystemExit, match=f"find 'causal' was not run; recorded: {name}"):
        ladder.main([str(out), "--find", "causal", "--plants", "D01"])
    with pytest.raises(SystemExit, match="no plant 'D99'"):
        ladder.main([str(out), "--find", name, "--plants", "D01", "D99"])
