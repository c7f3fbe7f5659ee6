"""scripts/multiquery_slots.py: each answer slot of a multiquery sample is classified as written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("multiquery_slots", ROOT / "scripts" / "multiquery_slots.py")
slots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(slots)

NEEDLES = [
    "A magic number for opal-finch is 2376695.",
    "A magic number for ruby-jackal is 9931364.",
    "A magic number for olive-ferret is 4907443.",
    "A magic number for onyx-lynx is 7743454.",
]


def _sample(doc_id: int, written: str, target: str = "4907443, 7743454.") -> dict:
    doc = {"needles": NEEDLES, "keys": ["olive-ferret", "onyx-lynx"]}
    return {"doc_id": doc_id, "doc": doc, "target": target, "filtered_resps": [written]}


def test_each_slot_is_classified():
    assert slots.slot_outcomes(_sample(0, " 4907443, 7743454.\n66")) == ["right", "right"]
    assert slots.slot_outcomes(_sample(0, " 4907443, 2376695.\n 41")) == ["right", "distractor needle"]
    assert slots.slot_outcomes(_sample(0, " 7743454, 7743454.")) == ["other queried key", "right"]
    assert slots.slot_outcomes(_sample(0, " 4907443")) == ["right", "no needle"]
    assert slots.slot_outcomes(_sample(0, " 1234567, 9931364.")) == ["no needle", "distractor needle"]
    assert slots.slot_outcomes(_sample(0, " 4907443.", target="4907443.")) == []


def test_table_from_sample_files(tmp_path, capsys):
    run = tmp_path / "m1"
    run.mkdir()
    lines = [
        _sample(0, " 4907443, 2376695."),
        _sample(1, " 4907443, 7743454."),
        _sample(2, " 9931364, 7743454."),
    ]
    (run / "samples_ssm_niah_multiquery_2026-12-04T20-55-58.874410.jsonl").write_text(
        "".join(json.dumps(s) + "\n" for s in lines)
    )
    assert slots.main([str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| m1 | 3 of 3 | 1 | 2 | 0 | 1 | 0 |"
    assert out[3] == "| m1 | 3 of 3 | 2 | 2 | 0 | 1 | 0 |"
    assert slots.main([str(tmp_path)]) == 0  # found recursively
    empty = tmp_path / "empty"
    empty.mkdir()
    assert slots.main([str(empty)]) == 2
    assert "no ssm_niah_multiquery sample file" in capsys.readouterr().err
