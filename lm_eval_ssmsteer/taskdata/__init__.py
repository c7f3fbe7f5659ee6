"""Offline, deterministic data of the ssmsteer task suite (pure Python: no torch, no lm_eval).

``generate(task, split, n, seed, **knobs)`` returns ``n`` documents, each a dict with at least
``context`` (the prompt), ``completion`` (what a model should write after ``context + " "``: the answer
in the task's format, with its terminator), ``target`` (the answer that is scored: a string, or a list of
strings for the multi-answer long-context tasks) and ``max_gen_toks`` (the generation budget derived from
the completion); tasks with a multiple-choice variant add ``choices`` and ``gold``. A document that asks
several queries of one context (MQAR) lists them in ``queries``, each with its own ``context``,
``completion``, ``target`` (and ``choices``/``gold``); its top-level fields are those of its last query.

``TASKS`` maps every task name to its ``TaskSpec`` (summary, anchor, knobs with defaults).
"""

from __future__ import annotations

import random
from typing import Any

from lm_eval_ssmsteer.taskdata import copying, longctx, retrieval, ruler
from lm_eval_ssmsteer.taskdata.core import (
    SPLITS,
    LengthTooShort,
    TaskDataError,
    TaskSpec,
    TokenCounter,
    char_count,
    split_rng,
)

TASKS: dict[str, TaskSpec] = {**copying.TASKS, **retrieval.TASKS, **longctx.TASKS, **ruler.TASKS}
FAMILIES = ("copying", "retrieval", "longctx")

__all__ = [
    "FAMILIES",
    "SPLITS",
    "TASKS",
    "TaskDataError",
    "TaskSpec",
    "answer_text",
    "generate",
    "prompts",
    "task_spec",
]


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise TaskDataError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    return TASKS[task]


def generate(
    task: str,
    split: str,
    n: int,
    seed: int = 0,
    count_tokens: TokenCounter | None = None,
    workers: int = 1,
    **knobs: Any,
) -> list[dict]:
    """`n` documents of `task` from `split` ("train", "calibration" or "test"), identical for equal
    arguments. `count_tokens` measures the long-context tasks' `length` (default: the project tokenizer,
    one token per character). ``workers`` > 1 builds documents in that many threads, for a `count_tokens`
    that may be called from several threads at once and releases the GIL (a Hugging Face fast tokenizer
    does: measuring lengths is most of a long document's cost); the documents are the same for any
    number of workers."""
    spec = task_spec(task)
    if split not in SPLITS:
        raise TaskDataError(f"{task}: unknown split {split!r}; splits: {', '.join(SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise TaskDataError(f"{task}: number of documents n = {n!r} must be an integer >= 0")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TaskDataError(f"{task}: workers = {workers!r} must be an integer >= 1")
    resolved = spec.resolve_knobs(knobs)
    counter = count_tokens or char_count
    stream = split_rng(task, split, seed)
    # every document gets its own stream, drawn in order before any is built: documents do not depend on
    # each other's token counts (so they can be built in any order), and the same seed gives the same
    # needles at every length
    seeds = [stream.getrandbits(64) for _ in range(n)]

    def build(index: int) -> dict | LengthTooShort:
        try:
            doc = spec.make(random.Random(seeds[index]), split, resolved, counter)
        except LengthTooShort as exc:
            return exc  # go on: the message gives the least length for all n documents
        return {"task": task, "split": split, "seed": seed, "index": index, **doc}

    if workers > 1 and n > 1:
        from concurrent.futures import ThreadPoolExecutor

        built = [build(0)]  # alone first: a tokenizer may set itself up on its first call
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ssmsteer-taskdata") as pool:
            built += pool.map(build, range(1, n))
    else:
        built = [build(index) for index in range(n)]
    minimums = [b.minimum for b in built if isinstance(b, LengthTooShort)]
    if minimums:
        raise TaskDataError(
            f"length {resolved['length']} is below the minimum of {max(minimums)} tokens that {task} needs "
            f"with these knobs, seed and tokenizer: {len(minimums)} of {n} documents do not fit their intro, "
            f"needles, question, filler between the needles and generation budget"
        )
    return [b for b in built if not isinstance(b, LengthTooShort)]


def answer_text(doc: dict) -> str:
    """What follows the context after one space: the answer in the task's format."""
    return doc["completion"]


def prompts(doc: dict) -> list[tuple[str, str]]:
    """(context, completion) of every query of a document: one for most tasks, one per query for MQAR."""
    return [(q["context"], q["completion"]) for q in doc.get("queries") or [doc]]
