"""benchmarks/data_parallel.py's comparison of a one-process and an N-process lm-eval run (the GPU part of
the two-GPU issue runs elsewhere; this checks that a difference cannot slip through)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

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


def test_a_document_whose_metric_differs_is_a_problem_even_with_the_same_response(tmp_path):
    one = _write(tmp_path / "p1", 1, ["a", "b"])
    two = _write(tmp_path / "p2", 2, ["a", "b"])
    path = next(two.glob("samples_*.jsonl"))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[1] |= {"metrics": ["acc"], "acc": 0.0}
    path.write_text("\n".join(json.dumps(x) for x in lines))
    report = dp.compare(one, two, 2)
    assert report["identical_documents"] == 1
    assert report["problems"] == ["1 documents' outputs differ (e.g. t/1)"]


def test_a_logprob_difference_within_the_stated_tolerance_passes_but_is_reported(tmp_path):
    one = _write(tmp_path / "p1", 1, ["a", "b"])
    two = _write(tmp_path / "p2", 2, ["a", "b"], logprob=-1.25 + 2**-10)
    assert dp.compare(one, two, 2)["problems"] == ["2 documents' outputs differ (e.g. t/0, t/1)"]
    within = dp.compare(one, two, 2, logprob_tolerance=1e-3)
    assert within["problems"] == []
    assert within["identical_documents"] == 0
    assert within["max_abs_logprob_difference"] == 2**-10


def _sweep(folder: Path, answers: dict[str, list[str]], leaderboard: str) -> Path:
    for cell, resps in answers.items():
        _write(folder / "cells" / cell / "model", 1, resps)
    (folder / "report").mkdir(parents=True)
    (folder / "report" / "leaderboard.csv").write_text(leaderboard)
    return folder


def test_sweeps_compare_cell_by_cell_and_by_leaderboard(tmp_path):
    answers = {"unsteered": ["a", "b"], "L3_delta_x2_abcd": ["a", "c"]}
    one = _sweep(tmp_path / "s1", answers, "rank,model\n1,m\n")
    same = dp.compare_sweeps(one, _sweep(tmp_path / "s2", answers, "rank,model\n1,m\n"))
    assert same["problems"] == []
    assert (same["cells"], same["documents"], same["identical_documents"]) == (2, 4, 4)

    changed = {"unsteered": ["a", "b"], "L3_delta_x2_abcd": ["a", "d"]}
    report = dp.compare_sweeps(one, _sweep(tmp_path / "s3", changed, "rank,model\n1,m\n"))
    assert report["problems"] == ["cell L3_delta_x2_abcd: 1 documents' outputs differ (e.g. t/1)"]
    assert report["identical_documents"] == 3

    other_board = dp.compare_sweeps(one, _sweep(tmp_path / "s4", answers, "rank,model\n1,n\n"))
    assert other_board["problems"] == ["the leaderboards differ"]
    missing_cell = dp.compare_sweeps(
        one, _sweep(tmp_path / "s5", {"unsteered": ["a", "b"]}, "rank,model\n1,m\n")
    )
    assert missing_cell["problems"] == ["cells differ: ['L3_delta_x2_abcd']"]


def test_steering_is_taken_out_of_the_sweeps_model_arguments():
    args = "pretrained=m,dtype=bfloat16,steer=paper-mamba-130m,steer_scale=2"
    assert dp._without_steering(args) == "pretrained=m,dtype=bfloat16"


def test_one_process_against_one_is_refused_before_anything_runs(monkeypatch, capsys, tmp_path):
    argv = ["data_parallel.py", "--processes", "1", "--model-args", "pretrained=m", "--tasks", "t"]
    monkeypatch.setattr("sys.argv", [*argv, "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stopped:
        dp.main()
    assert stopped.value.code == 2
    assert "--processes 1: the comparison is of one process against N >= 2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shares_follow_lm_evals_split_of_documents_between_ranks():
    samples = {("a", i): {} for i in range(5)} | {("b", i): {} for i in range(3)}
    assert dp.shares(samples, 2) == [{"a": [0, 2, 4], "b": [0, 2]}, {"a": [1, 3], "b": [1]}]
    assert dp.shares(samples, 3)[2] == {"a": [2], "b": [2]}
    with pytest.raises(SystemExit, match="task b has 3 documents, fewer than the 4 processes"):
        dp.shares(samples, 4)


def test_a_replayed_share_gets_its_documents_ids_back(tmp_path):
    # lm-eval numbers a --samples run's documents 0, 1, ... in the order given
    rank0 = _write(tmp_path / "r0", 1, ["x0", "x2", "x4"])
    rank1 = _write(tmp_path / "r1", 1, ["x1", "x3"])
    merged = dp.merge_replay([rank0, rank1], [{"t": [0, 2, 4]}, {"t": [1, 3]}])
    assert sorted(merged) == [("t", i) for i in range(5)]
    assert [merged[("t", i)]["filtered_resps"] for i in range(5)] == [[f"x{i}"] for i in range(5)]
    assert [merged[("t", i)]["doc_id"] for i in range(5)] == list(range(5))
    # lm-eval 0.4.13 keeps the documents' own ids: nothing to map
    kept = _write(tmp_path / "k1", 1, ["x0", "x1", "x2", "x3"])
    lines = [json.loads(x) for x in next(kept.glob("samples_*")).read_text().splitlines()][1::2]
    next(kept.glob("samples_*")).write_text("\n".join(json.dumps(x) for x in lines))
    assert sorted(dp.merge_replay([kept], [{"t": [1, 3]}])) == [("t", 1), ("t", 3)]
    with pytest.raises(SystemExit, match="task t has documents"):
        dp.merge_replay([kept], [{"t": [0, 2]}])


def _samples(resps: list[str]) -> dict:
    return {
        ("t", i): {"doc_id": i, "doc_hash": f"h{i}", "resps": [[[-1.25, True]]], "filtered_resps": [r]}
        for i, r in enumerate(resps)
    }


def test_differences_the_one_gpu_replay_reproduces_are_batch_composition_not_problems(tmp_path):
    one = _write(tmp_path / "p1", 1, ["a", "b", "c"])
    two = _write(tmp_path / "p2", 2, ["a", "B", "c"])
    report = dp.compare(one, two, 2)
    assert report["problems"] == ["1 documents' outputs differ (e.g. t/1)"]
    dp.explain_by_replay(report, _samples(["a", "B", "c"]), dp._load(two)[1], 0.0)
    assert report["problems"] == []
    assert report["batch_composition_differing"] == ["t/1"]
    assert report["replay"]["identical_documents"] == 3


def test_a_launch_that_differs_from_the_replay_of_its_own_batches_fails(tmp_path):
    one = _write(tmp_path / "p1", 1, ["a", "b", "c"])
    two = _write(tmp_path / "p2", 2, ["a", "B", "C"])
    report = dp.compare(one, two, 2)
    dp.explain_by_replay(report, _samples(["a", "B", "c"]), dp._load(two)[1], 0.0)
    assert report["problems"] == [
        "2 documents' outputs differ (e.g. t/1, t/2)",
        "against the one-GPU replay of its shards: 1 documents' outputs differ (e.g. t/2)",
    ]
    assert "batch_composition_differing" not in report


def test_replay_only_is_the_lm_eval_leg_alone(monkeypatch, capsys, tmp_path):
    argv = ["data_parallel.py", "--model-args", "pretrained=m", "--tasks", "t", "--replay-only"]
    monkeypatch.setattr("sys.argv", [*argv, "--sweep-layers", "1", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stopped:
        dp.main()
    assert stopped.value.code == 2
    assert "--replay-only is the lm_eval leg alone" in capsys.readouterr().err


def test_cells_seconds_spans_every_process_cells(tmp_path):
    # three cells, two of them evaluated at once by two processes: first start 100, last end 131.5
    for cell, start, seconds in (("a", 100.0, 12.0), ("b", 100.5, 11.0), ("c", 112.0, 19.5)):
        folder = tmp_path / "cells" / cell / "model"
        folder.mkdir(parents=True)
        results = {"date": start, "total_evaluation_time_seconds": str(seconds)}
        (folder / "results_2026-12-04T17-58-49.json").write_text(json.dumps(results))
    assert dp.cells_seconds(tmp_path) == pytest.approx(31.5)
    assert dp.cells_seconds(tmp_path / "empty") is None


def test_logprobs_as_lm_eval_0_4_13_writes_them(tmp_path):
    """lm-eval 0.4.13 logs a loglikelihood response as strings: the difference is measured, not read as 0."""

    def run(folder: Path, third: str) -> Path:
        folder.mkdir(parents=True)
        (folder / "results_2026-12-04T10-00-00.json").write_text(json.dumps({"results": {}, "config": {}}))
        choices = [["-161.39654541015625", "False"], ["-169.5766", "False"], [third, "False"]]
        lines = [
            {"doc_id": 0, "doc_hash": "h0", "resps": [[c] for c in choices], "filtered_resps": choices},
            {"doc_id": 1, "doc_hash": "h1", "resps": [["2301"]], "filtered_resps": ["2301"]},
        ]
        (folder / "samples_t_2026-12-04T10-00-00.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
        return folder

    one, many = run(tmp_path / "one", "-148.74887084960938"), run(tmp_path / "many", "-157.8021240234375")
    report = dp.compare(one, many, None)
    assert report["max_abs_logprob_difference"] == pytest.approx(9.0532531738)
    assert report["differing"] == ["t/0"]
    assert report["identical_documents"] == 1
    assert dp._logprobs({"resps": [[["-1.5", "True"]], [["-2.25", "False"]]]}) == [-1.5, -2.25]
    assert dp._logprobs({"resps": [["some generated text"]]}) == []


def test_samples_in_keys_by_task_and_document(tmp_path):
    from lm_eval_ssmsteer.report.documents import samples_in

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "samples_ssm_copy_mc_2026-12-04T17-50-10.408126.jsonl").write_text(
        json.dumps({"doc_id": 3, "x": 1}) + "\n\n"
    )
    (tmp_path / "a" / "b" / "samples_ssm_copy_mc_merged.jsonl").write_text(json.dumps({"doc_id": 4, "x": 2}))
    found = dp.samples_in(tmp_path)
    assert (
        found
        == samples_in(tmp_path)
        == {("ssm_copy_mc", 3): {"doc_id": 3, "x": 1}, ("ssm_copy_mc", 4): {"doc_id": 4, "x": 2}}
    )
