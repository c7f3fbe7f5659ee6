"""scripts/survey_sizes.py: where a survey plant lies among its site's channel sizes, on the plant's own
calibration documents (docs/finder.md, "Narrow screen")."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from lm_eval_ssmsteer.cli import main

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("survey_sizes", ROOT / "scripts" / "survey_sizes.py")
sizes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sizes)


def test_a_mixer_out_plant_is_its_sites_smallest_channels_and_low_outliers(tmp_path, capsys):
    out = tmp_path / "survey"
    args = ["study", "survey", "--model", "tiny-random-mamba", "--out", str(out), "--plants", "D01",
            "--tasks", "ssm_passkey", "--lengths", "256", "--finds", "outlier",
            "--test-docs", "8", "--docs-per-task", "8"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    record = out / "plants" / "D01.json"
    row = json.loads(record.read_text())
    assert sizes.main([str(out)]) == 0
    assert capsys.readouterr().out == ""  # the tiny random model is not damaged: nothing to report
    row["damage"]["mean"] = 0.5
    record.write_text(json.dumps(row))
    assert sizes.main([str(out)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    got = json.loads(line)
    plant = row["plant"]
    assert (got["id"], got["pair"], got["count"]) == (
        "D01",
        f"L{plant['layer']} {plant['site']}",
        plant["count"],
    )
    # the plant scales out_proj rows (x0.05 here): exactly those channels are the smallest, far below the rest
    assert plant["site"] == "mixer_out" and plant["scale"] <= 0.05 and got["count"] < got["width"]
    assert got["planted_among_smallest"] == got["planted_in_outliers"] == got["outliers"] == plant["count"]
    assert got["last_planted_position"] == plant["count"] - 1 and got["pair_rank"] == 1
    # the narrow screen's plan (the tiny model's sites are all at most 64 wide): each count it tries up to
    # the planted ones is all planted channels, restored from far below the median
    width = got["width"]
    assert got["narrow_plan"] and all(1 <= k <= max(1, width // 4) for k, _, _ in got["narrow_plan"])
    for k, restore, planted in got["narrow_plan"]:
        assert planted == min(k, plant["count"])
        assert restore > 4 if k <= plant["count"] else restore > 1
    assert got["narrow_points_at"]["4"] <= got["narrow_points"]
    assert got["narrow_points"] >= len(got["narrow_plan"]) and got["narrow_other_max"] is not None
    assert sizes.main([str(out), "--narrow", "0", "--floors", "2", "8"]) == 0
    assert "narrow_plan" not in json.loads(capsys.readouterr().out)
