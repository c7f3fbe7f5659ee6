"""scripts/survey_ceiling.py: it rebuilds a survey plant and the find's documents exactly (the found spec's
calibration loss equals the one the survey recorded), and it sorts a lost plant by which side lost it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lm_eval_ssmsteer.cli import main

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("survey_ceiling", ROOT / "scripts" / "survey_ceiling.py")
ceiling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ceiling)


def _row(found_back, x8_back, found_loss, x8_loss, inverse_back=None, inverse_loss=0.3) -> dict:
    score = {name: 0.0 for name in ceiling.STATISTICS}
    return {
        "found win-back": found_back,
        "planted x8 win-back": x8_back,
        "inverse win-back": inverse_back,
        "scores": {
            "found": score | {"calibration loss": found_loss, "validation loss": 0.2},
            "planted x8": score | {"calibration loss": x8_loss, "validation loss": 0.1},
            "inverse": score | {"calibration loss": inverse_loss, "validation loss": 0.3},
        },
    }


def test_a_lost_plant_is_the_searchs_when_the_true_repair_scores_lower_else_the_objectives():
    assert ceiling.classify(_row(0.9, 0.1, 0.5, 0.1)) == "won"
    assert ceiling.classify(_row(0.3, 0.5, 0.5, 0.1)) == "unreachable"
    assert ceiling.classify(_row(0.3, None, 0.5, 0.1)) == "unreachable"
    assert ceiling.classify(_row(0.3, 1.0, 0.5, 0.1)) == "search"
    assert ceiling.classify(_row(0.3, 1.0, 0.1, 0.5)) == "objective"
    assert ceiling.classify(_row(0.3, 1.0, 0.1, 0.1)) == "objective"  # a tie keeps the found spec
    assert ceiling.prefers(_row(0.3, 1.0, 0.1, 0.5)) == {
        "calibration loss": False,
        "calibration wrong": False,
        "calibration median": False,
        "validation loss": True,
    }
    # the planted x8 short of the goal: the exact inverse is the true repair the plant is judged against
    short = _row(0.3, 0.5, 0.2, 0.1, inverse_back=0.95, inverse_loss=0.3)
    assert ceiling.reference(short) == "inverse" and ceiling.classify(short) == "objective"
    assert ceiling.prefers(short)["calibration loss"] is False
    assert ceiling.classify(_row(0.3, 0.5, 0.2, 0.1, inverse_back=0.95, inverse_loss=0.05)) == "search"
    assert ceiling.reference(_row(0.3, 1.0, 0.2, 0.1, inverse_back=0.95)) == "planted x8"


def test_it_reproduces_the_surveys_plant_and_the_finds_calibration_loss(tmp_path, capsys):
    out = tmp_path / "survey"
    args = ["study", "survey", "--model", "tiny-random-mamba", "--out", str(out), "--plants", "D01",
            "--tasks", "ssm_passkey", "--lengths", "256",
            "--test-docs", "8", "--docs-per-task", "8"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    record = out / "plants" / "D01.json"
    row = json.loads(record.read_text())
    # a survey names a find by every option that is on
    default = "outlier:validate=6:choice=paired:narrow=64:narrow_floor=4:grow=3"
    assert default in row["finds"], "the default find ran"
    row["damage"]["mean"] = 0.5  # the tiny random model is not damaged; the ceiling needs a damaging plant
    record.write_text(json.dumps(row))
    assert ceiling.main([str(out), "--find", default, "--out", str(tmp_path / "c.json")]) == 0
    printed = capsys.readouterr().out
    measured = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert len(measured) == 1 and "| D01 |" in printed
    m = measured[0]
    scores = m["scores"]
    assert set(scores) == set(ceiling.CONFIGS)
    if m["found"] is not None:  # same documents, same weights, same CPU path as the survey's find
        assert scores["found"]["calibration loss"] == pytest.approx(m["recorded calibration loss"], rel=1e-5)
    else:
        assert scores["found"] == scores["damaged"]
    assert m["kind"] == ceiling.classify(m)
    # the table again from the saved rows, without a model
    assert ceiling.main(["--table", str(tmp_path / "c.json")]) == 0
    assert capsys.readouterr().out.strip() == printed.strip()
    with pytest.raises(SystemExit):  # --table reads saved rows only; a folder beside it is a mistake
        ceiling.main(["--table", str(tmp_path / "c.json"), str(out)])
    assert "--table runs no model" in capsys.readouterr().err

    row["channels"] = [c + 1 for c in row["channels"]]  # a record the plant does not reproduce
    record.write_text(json.dumps(row))
    with pytest.raises(SystemExit, match="planted channels differ"):
        ceiling.main([str(out), "--find", default])
    with pytest.raises(SystemExit):
        # nothing damaged enough: an error, not a table
        ceiling.main([str(out), "--find", default, "--min-damage", "0.9"])
    assert "no plant with damage >= 0.9" in capsys.readouterr().err
