"""The task YAMLs: every task and group loads through lm-eval's TaskManager fully offline, metadata
knobs reach the generators, bad metadata fails clearly, and a tiny model with another tokenizer runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_ssmsteer.taskdata import TaskDataError
from lm_eval_ssmsteer.taskdata.harness import documents, split_metadata

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "tasks"
NEOX = ROOT.parent / "shared" / "data" / "gpt-neox-20b-tokenizer"
OFFLINE = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(ROOT),
}
EXPECTED = {
    "ssm_copy",
    "ssm_selective_copy",
    "ssm_mamba_selective_copy",
    "ssm_phonebook",
    "ssm_mqar",
    "ssm_zoology_mqar",
    "ssm_kv_retrieval",
    "ssm_induction",
    "ssm_passkey",
    "ssm_niah_single",
    "ssm_niah_multikey",
    "ssm_niah_multivalue",
    "ssm_niah_multiquery",
    "ssm_variable_tracking",
    "ssm_ruler_niah_single",
    "ssm_ruler_niah_multikey",
    "ssmsteer_copying",
    "ssmsteer_retrieval",
    "ssmsteer_longctx",
    "ssmsteer",
    "ssmsteer_quick",
}

LOAD_ALL = r"""
import json, sys
from lm_eval.tasks import TaskManager, get_task_dict
tm = TaskManager(include_path=sys.argv[1], include_defaults=False, metadata=json.loads(sys.argv[2]))
out = {"names": sorted(tm.all_tasks), "tasks": {}}
def walk(d):
    for k, v in d.items():
        if isinstance(v, dict):
            walk(v)
        else:
            docs = list(v.test_docs())
            lengths = sorted({d.get("length", 0) for d in docs})
            out["tasks"][v.config.task] = {
                "n": len(docs), "lengths": lengths, "type": v.config.output_type, "version": v.VERSION
            }
walk(get_task_dict(["ssmsteer", "ssmsteer_quick"], tm))
print("RESULT" + json.dumps(out))
"""


def _load_all(metadata: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_ALL, str(TASKS_DIR), json.dumps(metadata)],
        env=OFFLINE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def test_every_task_and_group_loads_offline_with_the_metadata_knobs():
    out = _load_all({"num_samples": 2, "max_seq_lengths": [600, 900], "num_entries": 5})
    assert set(out["names"]) >= EXPECTED
    tasks = out["tasks"]
    for name, info in tasks.items():
        long = info["lengths"] != [0]
        assert info["n"] == (4 if long else 2), name
        if long:
            assert info["lengths"] == [600, 900], name
    assert tasks["ssm_phonebook_mc"]["type"] == "multiple_choice"
    assert {t for t in tasks if t.startswith("ssmq_")} == {
        "ssmq_copy",
        "ssmq_phonebook_mc",
        "ssmq_mqar_mc",
        "ssmq_kv_retrieval_mc",
        "ssmq_induction_mc",
        "ssmq_passkey_mc",
        "ssmq_niah_single",
    }


# suite v2 (issue 16): the tasks whose documents, prompts or scoring changed are at 2.0, new tasks at 1.0;
# a change to a task's documents or scoring bumps its version here and in its YAML
VERSIONS = {
    **dict.fromkeys(["ssm_phonebook_mc", "ssm_kv_retrieval_mc", "ssm_induction_mc"], 1.0),
    **dict.fromkeys(["ssmq_phonebook_mc", "ssmq_kv_retrieval_mc", "ssmq_induction_mc"], 1.0),
    **dict.fromkeys(
        [
            "ssm_mamba_selective_copy",
            "ssm_zoology_mqar",
            "ssm_ruler_niah_single",
            "ssm_ruler_niah_multikey",
        ],
        1.0,
    ),
}


def test_task_versions_are_pinned():
    tasks = _load_all({"num_samples": 1, "max_seq_lengths": [600]})["tasks"]
    assert {name: info["version"] for name, info in tasks.items()} == {
        name: VERSIONS.get(name, 2.0) for name in tasks
    }


def test_metadata_knobs_reach_the_generator_and_other_tasks_knobs_are_ignored():
    docs = documents(
        "ssm_phonebook",
        {
            "num_entries": 5,
            "num_samples": 3,
            "num_pairs": 99,
            "pretrained": "x",
            "steer_scale": 2.0,
            "version": 1.0,
        },
    )
    assert len(docs) == 3 and all(d["context"].split("\n\n")[0].count("\n") == 4 for d in docs)


@pytest.mark.parametrize(
    ("task", "metadata", "message"),
    [
        (
            "ssm_passkey",
            {"max_seq_lengths": [64]},
            "'max_seq_lengths' value 64: length 64 is below the minimum",
        ),
        ("ssm_passkey", {"max_seq_lengths": [-5]}, "'max_seq_lengths' = [-5] must be a non-empty list"),
        ("ssm_mqar", {"num_pair": 8}, "unknown metadata key 'num_pair' = 8; did you mean 'num_pairs'?"),
        ("ssm_mqar", {"num_pairs": -2}, "knob 'num_pairs' = -2 is below the minimum 1"),
        ("ssm_copy", {"num_samples": -1}, "'num_samples' = -1 must be an integer >= 1"),
        ("ssm_copy", {"max_seq_length": [512]}, "did you mean 'max_seq_lengths'?"),
    ],
)
def test_bad_metadata_fails_naming_key_value_and_what_is_allowed(task, metadata, message):
    with pytest.raises(TaskDataError) as info:
        documents(task, {"pretrained": None, **metadata})
    assert message in str(info.value)


def test_unknown_keys_far_from_any_knob_are_taken_as_model_arguments():
    knobs, lengths, n, seed = split_metadata("ssm_niah_multikey", {"dtype": "float32", "num_needles": 2})
    assert knobs == {"num_needles": 2} and lengths == [512, 1024, 2048] and n == 50 and seed == 0


def _tiny_random_mamba(folder: Path) -> None:
    from transformers import AutoTokenizer, MambaConfig, MambaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(NEOX))
    MambaForCausalLM(
        MambaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, state_size=4)
    ).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


def test_stock_hf_backend_runs_the_tasks_on_a_tiny_model_with_another_tokenizer(tmp_path):
    if not NEOX.is_dir():
        pytest.skip(f"the GPT-NeoX tokenizer is not at {NEOX} (../shared beside the clone)")
    _tiny_random_mamba(tmp_path / "tiny")
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={tmp_path / 'tiny'},dtype=float32",
        "--device",
        "cpu",
        "--tasks",
        "ssmq_copy,ssmq_phonebook_mc,ssmq_passkey_mc,ssm_niah_multivalue",
        "--include_path",
        str(TASKS_DIR),
        "--metadata",
        json.dumps({"num_samples": 2, "max_seq_lengths": [256]}),
        "--gen_kwargs",
        "max_gen_toks=4",
        "--output_path",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, env=OFFLINE, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result] = list((tmp_path / "out").rglob("results_*.json"))
    results = json.loads(result.read_text())["results"]
    assert set(results["ssmq_passkey_mc"]) >= {"256,none"}  # one metric per length
    assert "512,none" not in results["ssmq_passkey_mc"]
    assert 0.0 <= results["ssmq_phonebook_mc"]["acc,none"] <= 1.0
    assert "exact_match,none" in results["ssmq_copy"]
