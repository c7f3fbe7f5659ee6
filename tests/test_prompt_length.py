"""Every model argument passes the tasks' metadata check."""

from __future__ import annotations

import re

import pytest

from lm_eval_ssmsteer.backend import model_argument_names
from lm_eval_ssmsteer.taskdata import TASKS, TaskDataError
from lm_eval_ssmsteer.taskdata.harness import split_metadata


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
