"""Whole prompts reach the model: lm-eval's 2,048-token fallback (for a config that names no context
length, i.e. every Mamba config) cuts nothing, a user's max_length cuts with one warning per request type,
batch_size=auto probes at the longest prompt, and every model argument passes the tasks' metadata check."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import lm_eval
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager
from transformers import AutoTokenizer, Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

from lm_eval_ssmsteer.lmeval.backend import MambaSteeredLM, model_argument_names
from lm_eval_ssmsteer.taskdata import TASKS, TaskDataError
from lm_eval_ssmsteer.taskdata.harness import split_metadata

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "tasks"
NEOX = ROOT.parent / "shared" / "data" / "gpt-neox-20b-tokenizer"
# state-spaces/mamba-130m-hf and state-spaces/mamba2-130m, as transformers configs
REAL_SHAPES = {
    "mamba-130m": (
        MambaForCausalLM,
        MambaConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=24),
    ),
    "mamba2-130m": (
        Mamba2ForCausalLM,
        Mamba2Config(
            vocab_size=50288,
            hidden_size=768,
            num_hidden_layers=24,
            state_size=128,
            head_dim=64,
            num_heads=24,
            n_groups=1,
            expand=2,
        ),
    ),
}
HFLM_CUT_LINES = ("Combined length of context", "Left truncation applied")


class InputRecorder:
    """Stands in for a model's forward and generate: records the length of every input and answers at
    once (an 8192-token forward of a 130m model takes minutes on CPU; the point is lm-eval's plumbing).
    The forward returns logits for the last `tail` positions only: HFLM aligns logits to the input's end."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, model_class: type, tail: int = 64) -> None:
        self.forward_lengths: list[int] = []
        self.generate_lengths: list[int] = []
        recorder = self

        def forward(model, input_ids=None, **kwargs):
            recorder.forward_lengths += [input_ids.shape[1]] * input_ids.shape[0]
            width = min(tail, input_ids.shape[1])
            logits = torch.zeros(input_ids.shape[0], width, model.config.vocab_size)
            return type("Output", (), {"logits": logits})()

        def generate(model, input_ids=None, attention_mask=None, **kwargs):
            recorder.generate_lengths += attention_mask.sum(dim=1).tolist()
            eos = torch.full((input_ids.shape[0], 1), model.config.eos_token_id, dtype=input_ids.dtype)
            return torch.cat([input_ids, eos], dim=1)

        monkeypatch.setattr(model_class, "forward", forward)
        monkeypatch.setattr(model_class, "generate", generate)


def _evaluate(model_args: dict, tasks: list[str], metadata: dict, model: str = "mamba-steered") -> dict:
    # as `lm_eval --model_args ... --metadata ...` does: model_args merged into the tasks' metadata
    manager = TaskManager(
        include_path=str(TASKS_DIR), include_defaults=False, metadata={**model_args, **metadata}
    )
    return lm_eval.simple_evaluate(
        model=model,
        model_args={"device": "cpu", **model_args},
        tasks=tasks,
        task_manager=manager,
        batch_size=1,
        log_samples=True,
    )


def _prompts(results: dict, task: str) -> list[tuple[str, object]]:
    return [tuple(args) for sample in results["samples"][task] for args in sample["arguments"]]


def _budget(results: dict, task: str) -> int:
    """The generation budget of the task's documents (derived from the answer, the same for all)."""
    [budget] = {sample["doc"]["max_gen_toks"] for sample in results["samples"][task]}
    return budget


# -- the tasks' metadata check ---------------------------------------------------------------------


def test_model_argument_names_come_from_the_signatures():
    assert {"max_length", "pretrained", "tokenizer", "dtype", "truncation", "logits_cache"} <= (
        model_argument_names()
    )
    assert {"steer", "steer_scale", "fast_scan", "batch_size", "max_batch_size", "device"} <= (
        model_argument_names()
    )
    assert "self" not in model_argument_names() and "kwargs" not in model_argument_names()


@pytest.mark.parametrize("name", sorted(model_argument_names()))
def test_every_model_argument_passes_the_metadata_check_of_every_task(name):
    for task in TASKS:
        knobs, _, _, _ = split_metadata(task, {name: 4096})
        assert knobs == {}, task


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("num_sampels", "did you mean 'num_samples'?"),
        ("max_seq_lenghts", "did you mean 'max_seq_lengths'?"),
        ("max_seq_length", "did you mean 'max_seq_lengths'?"),
    ],
)
def test_a_misspelt_suite_knob_still_fails(key, message):
    with pytest.raises(TaskDataError, match=re.escape(message)):
        split_metadata("ssm_niah_single", {key: 2, "max_length": 4096})


# -- real shapes: mamba-130m-hf and mamba2-130m with the GPT-NeoX tokenizer ---------------------------


@pytest.fixture(scope="module", params=sorted(REAL_SHAPES))
def real_shape(request, tmp_path_factory) -> Iterator[tuple[Path, type]]:
    model_class, config = REAL_SHAPES[request.param]
    with torch.device("meta"):
        model = model_class(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():  # random weights, drawn faster than transformers' initialisation
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(NEOX)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(folder)
    yield folder, model_class
    shutil.rmtree(folder)  # 0.7 GB of weights


def test_every_prompt_token_of_8192_token_tasks_reaches_a_real_shape_model(real_shape, monkeypatch):
    folder, model_class = real_shape
    recorder = InputRecorder(monkeypatch, model_class)
    results = _evaluate(
        {"pretrained": str(folder)},
        ["ssm_niah_single", "ssm_niah_single_mc"],
        {"max_seq_lengths": [8192], "num_samples": 2},
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text).input_ids)

    generated = [n_tokens(context) for context, _ in _prompts(results, "ssm_niah_single")]
    assert sorted(recorder.generate_lengths) == sorted(generated)
    assert min(generated) >= 8000
    # HFLM scores (context + continuation) minus its last token
    scored = {
        n_tokens(context + continuation) - 1
        for context, continuation in _prompts(results, "ssm_niah_single_mc")
    }
    assert set(recorder.forward_lengths) == scored
    assert min(scored) >= 8000


@pytest.mark.parametrize("real_shape", ["mamba-130m"], indirect=True)
def test_stock_hf_backend_cuts_the_same_prompts_to_2048_tokens(real_shape, monkeypatch):
    folder, model_class = real_shape
    recorder = InputRecorder(monkeypatch, model_class)
    results = _evaluate(
        {"pretrained": str(folder)},
        ["ssm_niah_single", "ssm_niah_single_mc"],
        {"max_seq_lengths": [8192], "num_samples": 2},
        model="hf",
    )
    # 2048 minus the documents' max_gen_toks
    assert set(recorder.generate_lengths) == {2048 - _budget(results, "ssm_niah_single")}
    assert set(recorder.forward_lengths) == {2048}


def test_max_length_below_a_prompt_cuts_it_with_one_warning_per_request_type(real_shape, monkeypatch, caplog):
    folder, model_class = real_shape
    recorder = InputRecorder(monkeypatch, model_class)
    with caplog.at_level(logging.WARNING):
        results = _evaluate(
            {"pretrained": str(folder), "max_length": 4096},
            ["ssm_niah_single", "ssm_niah_single_mc"],
            {"max_seq_lengths": [8192], "num_samples": 2},
        )
    n_generate = len(_prompts(results, "ssm_niah_single"))
    n_scored = len(_prompts(results, "ssm_niah_single_mc"))
    kept = 4096 - _budget(results, "ssm_niah_single")  # max_length minus the documents' max_gen_toks
    warnings = [r.getMessage() for r in caplog.records if r.name == "lm_eval_ssmsteer.lmeval.backend"]
    assert len(warnings) == 2, warnings
    assert (
        f"max_length=4096 cut {n_generate} of {n_generate} generate_until prompts to their last {kept} tokens"
        in (warnings[0] + warnings[1])
    )
    assert (
        f"max_length=4096 cut {n_scored} of {n_scored} loglikelihood prompts to their last 4096 tokens"
        in (warnings[0] + warnings[1])
    )
    assert not [r for r in caplog.records if r.getMessage().startswith(HFLM_CUT_LINES)]
    assert set(recorder.generate_lengths) == {kept}
    assert set(recorder.forward_lengths) == {4096}


# -- the shipped tiny model, run for real ----------------------------------------------------------


def test_max_length_model_arg_runs_end_to_end_on_the_shipped_tiny_model(caplog):
    with caplog.at_level(logging.WARNING):
        results = _evaluate(
            {"pretrained": "tiny-random-mamba", "max_length": 200},
            ["ssm_niah_single", "ssmq_passkey_mc"],
            {"max_seq_lengths": [256], "num_samples": 2},
        )
    for task in ("ssm_niah_single", "ssmq_passkey_mc"):
        assert 0.0 <= results["results"][task]["256,none"] <= 1.0
    warnings = sorted(r.getMessage() for r in caplog.records if r.name == "lm_eval_ssmsteer.lmeval.backend")
    kept = 200 - _budget(results, "ssm_niah_single")
    assert [w.split(" tokens")[0] for w in warnings] == [
        f"max_length=200 cut 2 of 2 generate_until prompts to their last {kept}",
        f"max_length=200 cut {len(_prompts(results, 'ssmq_passkey_mc'))} of "
        f"{len(_prompts(results, 'ssmq_passkey_mc'))} loglikelihood prompts to their last 200",
    ]


def test_batch_size_auto_probes_at_the_longest_prompt(monkeypatch):
    lm = MambaSteeredLM(pretrained="tiny-random-mamba", device="cpu", batch_size="auto", max_batch_size=2)
    probes: list[tuple[int, int]] = []
    model_call = MambaSteeredLM._model_call

    def recording_call(self, inps, attn_mask=None, labels=None):
        probes.append(tuple(inps.shape))
        return model_call(self, inps, attn_mask=attn_mask, labels=labels)

    monkeypatch.setattr(MambaSteeredLM, "_model_call", recording_call)
    texts = ["a" * 300, "b" * 40]  # the shipped tokenizer is byte-level: one token per character
    lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])
    assert probes[0] == (2, 300)
    probes.clear()
    gen_kwargs = {"until": ["\n"], "max_gen_toks": 2, "do_sample": False}
    lm.generate_until([Instance("generate_until", {}, (t, gen_kwargs), i) for i, t in enumerate(texts)])
    assert probes[0] == (2, 300)
