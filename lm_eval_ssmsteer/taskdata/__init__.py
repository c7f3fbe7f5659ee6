"""Offline, deterministic data of the ssmsteer task suite (pure Python: no torch, no lm_eval).

``generate(task, split, n, seed, **knobs)`` returns ``n`` documents, each a dict with at least
``context`` (the prompt) and ``target`` (the answer string, or a list of answer strings for the
multi-answer long-context tasks); tasks with a multiple-choice variant add ``choices`` and ``gold``.
The answer follows the context after one space: ``context + " " + answer``.

``TASKS`` maps every task name to its ``TaskSpec`` (summary, anchor, knobs with defaults).
"""

from __future__ import annotations

import random
from typing import Any

from lm_eval_ssmsteer.taskdata import copying, longctx, retrieval
from lm_eval_ssmsteer.taskdata.core import (
    SPLITS,
    TaskDataError,
    TaskSpec,
    TokenCounter,
    char_count,
    split_rng,
)

TASKS: dict[str, TaskSpec] = {**copying.TASKS, **retrieval.TASKS, **longctx.TASKS}
FAMILIES = ("copying", "retrieval", "longctx")

__all__ = ["FAMILIES", "SPLITS", "TASKS", "TaskDataError", "TaskSpec", "answer_text", "generate", "task_spec"]


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise TaskDataError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    return TASKS[task]


def generate(
    task: str, split: str, n: int, seed: int = 0, count_tokens: TokenCounter | None = None, **knobs: Any
) -> list[dict]:
    """`n` documents of `task` from `split` ("train", "calibration" or "test"), identical for equal
    arguments. `count_tokens` measures the long-context tasks' `length` (default: the project tokenizer,
    one token per character)."""
    spec = task_spec(task)
    if split not in SPLITS:
        raise TaskDataError(f"{task}: unknown split {split!r}; splits: {', '.join(SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise TaskDataError(f"{task}: number of documents n = {n!r} must be an integer >= 0")
    resolved = spec.resolve_knobs(knobs)
    counter = count_tokens or char_count
    stream = split_rng(task, split, seed)
    docs: list[dict] = []
    while len(docs) < n:
        # every document (or MQAR sequence) gets its own stream: documents do not depend on each other's
        # token counts, and the same seed gives the same needles at every length
        made = spec.make(random.Random(stream.getrandbits(64)), split, resolved, counter)
        for doc in made if isinstance(made, list) else [made]:
            docs.append({"task": task, "split": split, "seed": seed, "index": len(docs), **doc})
    return docs[:n]


def answer_text(doc: dict) -> str:
    """The answer as one string: multi-answer targets are joined with ', '."""
    target = doc["target"]
    return target if isinstance(target, str) else ", ".join(target)
