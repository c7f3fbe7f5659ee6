"""benchmarks/data_parallel.py's comparison of a one-process and an N-process lm-eval run (the GPU part of
the two-GPU issue runs elsewhere; this checks that a difference cannot slip through)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("data_parallel", ROOT / "benchmarks" / "data_parallel.py")
dp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dp)


def _write(folder: Path, world_size: int, resps: list[str], logprob: float = -1.25) -> Path:
    folder.mkdir(parents=True)
    results = {"results": {"t": {"acc,none": 0.5}}, "config": {"world_size": world_size}}
    (folder / "results_2026-12-02T10-00-00.json").write_text(json.dumps(results))
    lines = [
        {"doc_id": i, "doc_hash": f"h{i}", "resps": [[[logprob, True]]], "filtered_resps": [r]}
        for i, r in enumerate(resps)
    ]
    (folder / "samples_t_2026-12-02T10-00-00.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return folder


def test_identical_runs_pass(tmp_path):
    one = _write(tmp_path / "p1", 1, ["a", "b"])
    two = _write(tmp_path / "p2", 2, ["a", "b"])
    report = dp.compare(one, two, 2)
    assert report["problems"] == []
    assert report["identical_documents"] == 2
    assert report["max_abs_logprob_difference"] == 0.0


def test_a_changed_answer_a_logprob_or_the_world_size_is_caught(tmp_path):
    one = _write(tmp_path / "p1", 1, ["a", "b"])
    assert dp.compare(one, _write(tmp_path / "x", 2, ["a", "c"]), 2)["identical_documents"] == 1
    shifted = dp.compare(one, _write(tmp_path / "y", 2, ["a", "b"], logprob=-1.5), 2)
    assert shifted["max_abs_logprob_difference"] == 0.25
    assert shifted["identical_documents"] == 0
    wrong_size = dp.compare(one, _write(tmp_path / "z", 1, ["a", "b"]), 2)["problems"]
    assert wrong_size == ["world_size recorded 1, launched 2"]
    missing = dp.compare(one, _write(tmp_path / "w", 2, ["a"]), 2)["problems"]
    assert missing == ["documents differ: 1 in one run only"]
