"""The shipped reference model: where it lives, what it records, and that it still solves what it was
trained on (a regression test of the CI subject through lm-eval, both backends)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lm_eval_ssmsteer.loading import resolve_model_path, shipped_models

ROOT = Path(__file__).resolve().parents[1]


def _lineage(record: dict) -> list[dict]:
    """A training.json of the staged trainer and the records of the runs it started from, newest first."""
    return [record, *(_lineage(record["init_record"]) if record.get("init_record") else [])]


# name -> (model type, runs in its training lineage, parameters); ref-mamba1-v1 has the legacy record
STAGED = {
    "ref-mamba1": ("mamba", 5, 2059680),
    "ref-mamba2": ("mamba2", 4, 2203504),
    "ref-bamba": ("bamba", 4, 2319632),
}


@pytest.mark.parametrize("name", [*STAGED, "ref-mamba1-v1"])
def test_reference_models_ship_small_with_provenance(name):
    folder = shipped_models()[name]
    assert resolve_model_path(name) == str(folder)
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 10 * 2**20, f"{size / 2**20:.1f} MiB"
    config = json.loads((folder / "config.json").read_text())
    info = json.loads((folder / "training.json").read_text())
    assert info["train_split"] == "train"
    if name == "ref-mamba1-v1":  # the first recipe's record (training/legacy.py)
        assert config["model_type"] == "mamba"
        assert info["steps_total"] == sum(s["steps_done"] for s in info["stages"])
        assert all(s["train_split"] == "train" for s in info["stages"])
        return
    model_type, n_runs, parameters = STAGED[name]
    assert config["model_type"] == model_type
    # the staged trainer's record: every run back to the first, each stage's steps contiguous, TRAIN only
    runs = _lineage(info)
    assert len(runs) == n_runs and runs[-1]["config"]["init"] is None
    for run in runs:
        assert run["train_split"] == "train" and run["arch"] == info["arch"]
        spans = [stage["steps"] for stage in run["stages"]]
        assert spans[0][0] == 0 and spans[-1][1] == run["steps_done"]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert info["parameters"] == parameters


def _evaluate(backend: str, model_args: dict, task: str, metadata: dict) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(
        include_path=str(ROOT / "tasks"), include_defaults=False, metadata={**model_args, **metadata}
    )
    out = simple_evaluate(
        model=backend, model_args=model_args, tasks=[task], task_manager=manager, device="cpu", batch_size=8
    )
    return out["results"][task]


@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("ref-mamba1", "mamba-steered"),
        ("ref-mamba1", "hf"),
        ("ref-mamba2", "mamba-steered"),
        ("ref-bamba", "mamba-steered"),
    ],
)
def test_reference_models_solve_passkey_through_lm_eval(name, backend):
    model_args = {"pretrained": resolve_model_path(name), "dtype": "float32"}
    if backend == "mamba-steered" and name == "ref-mamba1":
        model_args["fast_scan"] = True
    res = _evaluate(backend, model_args, "ssm_passkey", {"num_samples": 8, "max_seq_lengths": [512]})
    # 1.00 on 40 test documents at 512 tokens for each (README); a broken model, tokenizer or backend scores 0
    assert res["512,none"] >= 0.875, res


@pytest.mark.parametrize("backend", ["mamba-steered", "hf"])
@pytest.mark.parametrize("name", ["ref-mamba1", "ref-mamba2", "ref-bamba"])
def test_reference_models_copy_through_lm_eval(name, backend):
    """The copying half the first ref-mamba1 scored 0.00 on: 1.00 on 40 test documents for each (README)."""
    # the stock backend knows no short names: it gets the folder
    model_args = {"pretrained": resolve_model_path(name), "dtype": "float32"}
    res = _evaluate(backend, model_args, "ssm_copy", {"num_samples": 8})
    assert res["exact_match,none"] >= 0.875, res


@pytest.mark.parametrize("name", ["ref-mamba2", "ref-bamba"])
def test_mamba2_and_hybrid_references_retrieve_through_lm_eval(name):
    """MQAR (16 key-value pairs, exact match): 0.99 and 1.00 on 40 test documents (README)."""
    model_args = {"pretrained": name, "dtype": "float32"}
    res = _evaluate("mamba-steered", model_args, "ssm_mqar", {"num_samples": 8})
    assert res["exact_match,none"] >= 0.875, res
