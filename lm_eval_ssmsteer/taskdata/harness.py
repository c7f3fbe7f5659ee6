"""lm-eval glue of the task suite: the ``custom_dataset`` builders and ``process_results`` functions
that the YAMLs in ``tasks/`` call through their small ``utils.py``.

lm-eval 0.4.13 calls ``custom_dataset(**kwargs)`` with the task YAML's metadata, ``--model_args`` and
``--metadata`` merged in one dict. So this module sorts the keys: knobs of this task are used, knobs of
the suite's other tasks are ignored (one ``--metadata`` serves a whole group), every argument of the
``mamba-steered`` backend (and so of ``hf``) passes untouched, a key that looks like a misspelt knob is an
error, and everything else is taken as a model argument. Long-context lengths come
from ``max_seq_lengths`` and are measured with the tokenizer of ``tokenizer``/``pretrained``. A run that
leaves suite settings at their defaults is told so once (lm-eval's own per-task ``--metadata`` hint is
silenced for these tasks, ``log_filters``).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from functools import cache
from typing import Any

from lm_eval_ssmsteer.taskdata import TASKS, TaskDataError, answer_text, generate, task_spec
from lm_eval_ssmsteer.taskdata.core import TokenCounter, char_count

log = logging.getLogger(__name__)

DEFAULT_SEQ_LENGTHS = (512, 1024, 2048)
DEFAULT_NUM_SAMPLES = {"copying": 100, "retrieval": 100, "longctx": 50}
SUITE_KEYS = {"max_seq_lengths", "num_samples", "seed"}
# keys lm-eval itself puts in the metadata
_PLUMBING = {"version", "config_source", "_metadata", "task", "model"}


def _suite_knobs() -> set[str]:
    return SUITE_KEYS | {
        k for spec in TASKS.values() for k in spec.knobs if k != "length" or not spec.long_context
    }


def _model_arguments() -> frozenset[str]:
    from lm_eval_ssmsteer.lmeval.backend import model_argument_names  # lm-eval glue: imported only when used

    return model_argument_names()


def split_metadata(task: str, metadata: dict[str, Any]) -> tuple[dict[str, Any], list[int], int, int]:
    """(knobs of `task`, lengths, documents per length, seed) from the merged metadata."""
    spec = task_spec(task)
    suite = _suite_knobs()
    own = {k for k in spec.knobs if k != "length" or not spec.long_context}
    knobs: dict[str, Any] = {}
    for key, value in metadata.items():
        if key in own:
            knobs[key] = value
        elif key not in suite and key not in _PLUMBING and key not in _model_arguments():
            close = difflib.get_close_matches(key, sorted(suite), n=1, cutoff=0.8)
            if close:
                raise TaskDataError(
                    f"{task}: unknown metadata key {key!r} = {value!r}; did you mean {close[0]!r}? "
                    f"{task} takes: {', '.join(sorted(own | SUITE_KEYS))}"
                )
    n = metadata.get("num_samples", DEFAULT_NUM_SAMPLES[spec.family])
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TaskDataError(f"{task}: metadata 'num_samples' = {n!r} must be an integer >= 1")
    seed = metadata.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaskDataError(f"{task}: metadata 'seed' = {seed!r} must be an integer")
    lengths: list[int] = []
    if spec.long_context:
        raw = metadata.get("max_seq_lengths", list(DEFAULT_SEQ_LENGTHS))
        raw = [raw] if isinstance(raw, int) else raw
        if (
            not isinstance(raw, (list, tuple))
            or not raw
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in raw)
        ):
            raise TaskDataError(
                f"{task}: metadata 'max_seq_lengths' = {raw!r} must be a non-empty list of positive integers "
                f"(token counts), e.g. [512, 1024]"
            )
        lengths = list(dict.fromkeys(raw))
    return knobs, lengths, n, seed


@cache
def _hf_counter(name: str) -> TokenCounter:
    from transformers import AutoTokenizer

    from lm_eval_ssmsteer.loading import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
    if len(tokenizer("The quick brown fox.", add_special_tokens=False).input_ids) == 0:
        raise TaskDataError(
            f"tokenizer of {name!r} encodes text to 0 tokens: lengths cannot be measured; "
            f"pass another with --model_args tokenizer=..."
        )
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def token_counter(metadata: dict[str, Any]) -> TokenCounter:
    """Counts tokens of the evaluated model: `tokenizer`, else `pretrained` (short names resolved)."""
    for key in ("tokenizer", "pretrained", "model"):
        name = metadata.get(key)
        if isinstance(name, str) and name:
            return _hf_counter(name)
    log.warning("ssmsteer tasks: no tokenizer or pretrained in model_args: lengths are counted in characters")
    return char_count


def build_threads() -> int:
    """Threads that build long-context documents (a Hugging Face tokenizer measures their lengths and
    releases the GIL while it does): SSMSTEER_TASKDATA_THREADS if set, else the CPUs this process may
    use, at most 8. The documents are the same for any number."""
    value = os.environ.get("SSMSTEER_TASKDATA_THREADS")
    if value is not None:
        if not value.isdigit() or int(value) < 1:
            raise TaskDataError(f"SSMSTEER_TASKDATA_THREADS={value!r}: allowed values are integers >= 1")
        return int(value)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus))


@cache
def _say_defaults_once() -> None:
    num_samples = ", ".join(f"{n} ({family})" for family, n in DEFAULT_NUM_SAMPLES.items())
    log.warning(
        "ssmsteer tasks: settings that neither --metadata nor the task's YAML gives take their defaults: "
        "max_seq_lengths=%s (long-context tasks), num_samples=%s, seed=0, task knobs as in docs/tasks.md; "
        "e.g. --metadata='{\"max_seq_lengths\": [4096, 8192]}'",
        list(DEFAULT_SEQ_LENGTHS),
        num_samples,
    )


def documents(task: str, metadata: dict[str, Any]) -> list[dict]:
    """The test documents of `task` for the merged lm-eval metadata (every length for long-context)."""
    spec = task_spec(task)
    knobs, lengths, n, seed = split_metadata(task, metadata)
    if SUITE_KEYS - metadata.keys():  # some suite setting is left at its default
        _say_defaults_once()
    if not spec.long_context:
        docs = generate(task, "test", n, seed=seed, **knobs)
    else:
        counter = token_counter(metadata)
        workers = 1 if counter is char_count else build_threads()
        docs = []
        for length in lengths:
            try:
                docs += generate(
                    task, "test", n, seed=seed, count_tokens=counter, workers=workers, length=length, **knobs
                )
            except TaskDataError as exc:
                raise TaskDataError(f"{task}: metadata 'max_seq_lengths' value {length}: {exc}") from exc
    return [{**d, "answer": answer_text(d)} for d in docs]


def dataset(task: str, **metadata: Any) -> dict:
    """``custom_dataset`` of one task: {"test": datasets.Dataset}."""
    import datasets

    return {"test": datasets.Dataset.from_list(documents(task, metadata))}


# --- scoring ---------------------------------------------------------------------------------------------
# A generation is scored on the answer it starts with, whatever follows (the rest of the line, ", ...",
# ". ...", a newline): a pretrained model that goes on writing after a right answer is right. Answers are
# runs of letters and digits (UUID-like keys keep their inner hyphens); whitespace and punctuation around
# them are boundaries.

_ITEM = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")


def leading_items(generation: str, n: int) -> list[str]:
    """The first `n` answer items of a generation."""
    return _ITEM.findall(generation)[:n]


def answer_at_start(target: str, generation: str) -> bool:
    """Whether the generation starts with the target's items (a selective copy's letters are several)."""
    items = target.split(" ")
    return leading_items(generation, len(items)) == items


def exact_match(doc: dict, results: list[str]) -> dict[str, float]:
    """The document's share of right answers: one answer, or one per query (MQAR)."""
    targets = [q["target"] for q in doc["queries"]] if doc.get("queries") else [doc["target"]]
    return {"exact_match": sum(map(answer_at_start, targets, results)) / len(targets)}


def choice_per_query(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """Multiple choice per query (MQAR): the share of queries whose gold choice has the top log-likelihood."""
    right, start = 0, 0
    for query in doc["queries"]:
        logliks = [ll for ll, _ in results[start : start + len(query["choices"])]]
        right += logliks.index(max(logliks)) == query["gold"]
        start += len(query["choices"])
    return {"acc": right / len(doc["queries"])}


def greedy_per_query(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """Zoology's accuracy: the share of queries whose answer is the greedy next token(s)."""
    return {"acc": sum(greedy for _, greedy in results) / len(results)}


def ruler_postprocess(generation: str) -> str:
    """RULER's postprocess_pred (scripts/eval/evaluate.py): strip, control characters to newlines, strip."""
    return re.sub(r"[\x00-\x1f]", "\n", generation.strip()).strip()


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER's string_match_all for one document: the share of references contained in the prediction,
    case-insensitively (RULER reports the mean over documents times 100)."""
    return sum(r.lower() in prediction.lower() for r in references) / len(references)


def string_match_part(prediction: str, references: list[str]) -> float:
    """RULER's string_match_part for one document: 1 if any reference is contained, case-insensitively."""
    return max(float(r.lower() in prediction.lower()) for r in references)


def strict_match(prediction: str, references: list[str]) -> float:
    """Stricter than RULER: the share of references among the prediction's first len(references) answer
    items, exactly (case-sensitive; an extra digit or a preamble before the answers does not count)."""
    items = leading_items(prediction, len(references))
    return sum(r in items for r in references) / len(references)


def by_length_generated(doc: dict, results: list[str]) -> dict[str, float]:
    """RULER's metrics, one per length as in lm-eval's RULER tasks: "<length>" is string_match_all (RULER's
    metric for needles and variable tracking), "part_<length>" string_match_part, "strict_<length>" the
    stricter strict_match."""
    prediction = ruler_postprocess(results[0])
    references = doc["target"] if isinstance(doc["target"], list) else [doc["target"]]
    length = doc["length"]
    return {
        str(length): string_match_all(prediction, references),
        f"part_{length}": string_match_part(prediction, references),
        f"strict_{length}": strict_match(prediction, references),
    }


def by_length_choice(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    logliks = [ll for ll, _ in results]
    return {str(doc["length"]): float(logliks.index(max(logliks)) == doc["gold"])}
