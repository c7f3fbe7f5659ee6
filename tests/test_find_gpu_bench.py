"""Smoke test of benchmarks/find_gpu.py on a tiny shape on the CPU (the real run is on the GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# a small CPU run of the benchmark, for the tests that check which options reach find
TINY = ["--device", "cpu", "--layers", "2", "--hidden", "32", "--vocab", "256", "--docs", "8",
        "--length", "64", "--budget-seconds", "0.1", "--probe-passes", "1", "--no-progress"]  # fmt: skip


def load_script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling _kernels
    spec = importlib.util.spec_from_file_location("find_gpu_bench", BENCHMARKS / "find_gpu.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_find_gpu_benchmark_runs_tiny_on_cpu_and_its_numbers_agree(monkeypatch, tmp_path):
    bench = load_script(monkeypatch)
    layers, hidden, state = 2, 32, 16
    out = tmp_path / "find_gpu.json"
    bench.main(
        [
            "--device",
            "cpu",
            "--layers",
            str(layers),
            "--hidden",
            str(hidden),
            "--state",
            str(state),
            "--vocab",
            "256",
            "--docs",
            "8",
            "--length",
            "64",
            "--budget-seconds",
            "0.5",
            "--probe-passes",
            "2",
            "--no-progress",
            "--out",
            str(out),
        ]  # fmt: skip
    )
    doc = json.loads(out.read_text())
    assert doc["find"]["seconds"] > 0
    assert doc["find"]["chosen"]["site"] in doc["find"]["sites"]
    assert doc["find"]["batches_last_layer"] >= 1
    loo = doc["leave_one_out"]
    assert loo["channels_scored"] >= 1 and len(loo["scored"]) == loo["channels_scored"]
    assert loo["seconds"] >= loo["budget_seconds"] == 0.5
    assert loo["scored"][0] == {**loo["scored"][0], "layer": 0, "site": "mixer_out", "channel": 0}
    assert math.isclose(loo["seconds_per_channel"], loo["seconds"] / loo["channels_scored"])

    # Mamba-1, expand 2: mixer_out and residual are d_model wide, delta / ssm_out / gate d_inner, B and C
    # d_state; every site of every layer
    d_inner = 2 * hidden
    per_layer = 2 * hidden + 3 * d_inner + 2 * state
    assert doc["channels"]["total"] == layers * per_layer
    assert doc["channels"]["mixer_out"] == layers * hidden

    ext = doc["extrapolated"]
    per_channel = loo["seconds_per_channel"]
    assert math.isclose(ext["all_sites_seconds"], per_channel * layers * per_layer)
    assert math.isclose(ext["mixer_out_seconds"], per_channel * layers * hidden)
    assert math.isclose(ext["ratio_all"], ext["all_sites_seconds"] / doc["find"]["seconds"])
    assert math.isclose(ext["ratio_mixer_out"], ext["mixer_out_seconds"] / doc["find"]["seconds"])
    assert ext["depth_adjusted"]["all_sites_seconds"] > 0
    assert doc["kernels"]["active"] is False
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_find_gpu_benchmark_runs_the_method_it_is_given_and_refuses_an_unknown_one(monkeypatch, tmp_path):
    bench = load_script(monkeypatch)
    out = tmp_path / "find_gpu.json"
    bench.main([*TINY, "--method", "variance", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["args"]["method"] == "variance"
    # variance reads only the sites a module hook can read: what it chose proves find ran that method
    assert doc["find"]["chosen"]["site"] in ("mixer_out", "residual")
    assert "find (variance, all sites)" in bench.table(doc)
    with pytest.raises(SystemExit):
        bench.parse_args([*TINY, "--method", "nonsense"])


def test_find_gpu_benchmark_passes_blocks_to_find(monkeypatch, tmp_path):
    bench = load_script(monkeypatch)
    out = tmp_path / "find_gpu.json"
    bench.main([*TINY, "--method", "outlier", "--blocks", "2", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["find"]["blocks"] == 2
    # the block screen's raw record holds one best-block loss per distinct (layer, site) pair it screened
    assert doc["find"]["block_pairs_screened"] >= 2
    pairs = doc["find"]["block_pairs_screened"]
    assert f"find (outlier, --blocks 2: {pairs} pairs screened, all sites)" in bench.table(doc)
    bench.main([*TINY, "--method", "outlier", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["find"]["block_pairs_screened"] == 0
    assert "find (outlier, all sites)" in bench.table(doc)


def test_find_gpu_benchmark_passes_the_validation_and_scale_options_to_find(monkeypatch, tmp_path):
    bench = load_script(monkeypatch)
    from lm_eval_ssmsteer.finder import search

    seen = {}
    real = search.find

    def spy(*args, **kwargs):
        seen.update(kwargs)
        seen["result"] = real(*args, **kwargs)
        return seen["result"]

    monkeypatch.setattr(search, "find", spy)
    out = tmp_path / "find_gpu.json"
    options = ["--validate-top", "3", "--validate-choice", "paired", "--max-scale", "20"]
    bench.main([*TINY, "--method", "outlier", *options, "--out", str(out)])
    assert (seen["validate_top"], seen["validate_choice"], seen["max_scale"]) == (3, "paired", 20)
    assert seen["grow"] == 3 and seen["result"].scores["raw"]["grow"]  # find's default for outlier
    doc = json.loads(out.read_text())
    assert (doc["find"]["validate_top"], doc["find"]["max_scale"]) == (3, 20)
    label = "find (outlier, --validate-top 3 --validate-choice paired, --max-scale 20, all sites)"
    assert label in bench.table(doc)
    assert seen["result"].scores["max_scale"] == 20
    # the narrow screen is find's default for outlier (width 64, floor 4); the table says what it screened
    assert (seen["narrow"], seen["narrow_floor"]) == (64, 4.0)
    assert seen["result"].scores["raw"]["narrow"]["pairs"] == 14  # 2 layers x 7 sites, none over 64 wide
    row = f"| find: narrow screen (sites <= 64 channels) | {doc['find']['narrow_pairs_screened']} of 14 pairs"
    assert row in bench.table(doc)
    bench.main([*TINY, "--method", "outlier", "--narrow", "0", "--out", str(out)])
    assert seen["narrow"] == 0 and "narrow" not in seen["result"].scores["raw"]
    doc = json.loads(out.read_text())
    assert "find (outlier, --narrow 0, all sites)" in bench.table(doc) and "narrow screen" not in bench.table(
        doc
    )
    bench.main([*TINY, "--method", "outlier", "--narrow-floor", "0", "--out", str(out)])
    assert seen["narrow_floor"] == 0 and seen["result"].scores["raw"]["narrow"]["floor"] == 0
    assert "find (outlier, --narrow-floor 0, all sites)" in bench.table(json.loads(out.read_text()))
    bench.main([*TINY, "--method", "outlier", "--grow", "2", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert seen["grow"] == 2 and doc["find"]["grow"] == 2
    assert doc["find"]["grown"] == seen["result"].scores["raw"]["grow"]
    assert "find (outlier, --grow 2, all sites)" in bench.table(doc)
    # outlier grows 3 rounds by default; --grow 0 turns it off, and the label says so
    bench.main([*TINY, "--method", "outlier", "--grow", "0", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert seen["grow"] == 0 and "grow" not in seen["result"].scores["raw"]
    assert "find (outlier, --grow 0, all sites)" in bench.table(doc)
    doc["find"].pop("grow")  # a record from before grow: it did not grow
    assert "find (outlier, --grow 0, all sites)" in bench.table(doc)
    # outlier validates 6 pairs with the paired choice by default; a record that validated one says so
    assert (seen["validate_top"], seen["validate_choice"]) == (6, "paired")
    doc["find"]["validate_top"], doc["find"]["validate_choice"] = 1, "gain"
    assert "find (outlier, --validate-top 1, --grow 0, all sites)" in bench.table(doc)
    for bad in (
        ["--grow", "-1"],
        ["--max-scale", "7"],
        ["--validate-top", "1", "--validate-choice", "paired"],
        ["--method", "causal", "--validate-choice", "paired"],  # causal validates 1 pair by default
        ["--validate-top", "0"],
        ["--narrow-floor", "-1"],
        ["--method", "causal", "--narrow", "64"],
    ):
        with pytest.raises(SystemExit):
            bench.parse_args([*TINY, *bad])
