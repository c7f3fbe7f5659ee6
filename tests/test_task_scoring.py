"""Scoring of the task suite, from the definitions of issue 16: a right answer in the form a pretrained
model writes it scores 1 whatever follows it, a wrong one 0, the long-context tasks score as RULER does,
and MQAR scores per query with one document per sequence. The generation tasks run through lm-eval with
a stand-in model that writes a chosen text, cut by the task's budget and stop sequences as HFLM cuts it."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.models.utils import postprocess_generated_text
from lm_eval.tasks import TaskManager

from lm_eval_ssmsteer.taskdata import TASKS, generate
from lm_eval_ssmsteer.taskdata.harness import (
    by_length_generated,
    choice_per_query,
    exact_match,
    greedy_per_query,
    string_match_all,
    string_match_part,
)

TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"
# every task's generation variant (Zoology's MQAR is scored by loglikelihood only), and the quick ones
GENERATION_TASKS = [t for t in TASKS if t != "ssm_zoology_mqar"] + ["ssmq_copy", "ssmq_niah_single"]
# what pretrained models write after an answer
CONTINUATIONS = ["", " and then the text goes on", ", and more", ". The next sentence", "\nThe next line"]


def _answer(query: dict, form: str) -> str:
    """The right answer as a model would write it: in the task's format (with its terminator), bare, or
    after a newline (a start that RULER accepts)."""
    target = query["target"] if isinstance(query["target"], str) else ", ".join(query["target"])
    return {"format": " " + query["completion"], "bare": " " + target, "newline": "\n" + target}[form]


def _wrong(text: str) -> str:
    """Every answer item with its first character changed (a digit or letter to the next one)."""
    shift = {c: s[(s.index(c) + 1) % len(s)] for s in (string.digits, string.ascii_lowercase) for c in s}
    shift |= {c.upper(): v.upper() for c, v in shift.items() if c.isalpha()}
    out, start = [], True
    for c in text:
        out.append(shift[c] if start and c in shift else c)
        start = not c.isalnum()
    return "".join(out)


class ScriptedLM(LM):
    """Writes `write(query, document)` for each request; cut to max_gen_toks characters (one token per
    character, as the project tokenizer) and at the first stop sequence, as HFLM does."""

    def __init__(self, write) -> None:
        super().__init__()
        self.write = write

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            context, kwargs = request.arguments
            doc = request.doc
            [query] = [q for q in doc.get("queries") or [doc] if q["context"] == context]
            text = self.write(query, doc)[: kwargs["max_gen_toks"]]
            out.append(postprocess_generated_text(text, kwargs["until"], None))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.arguments
            doc = request.doc
            [query] = [q for q in doc.get("queries") or [doc] if q["context"] == context]
            right = continuation == " " + query["target"]
            out.append((0.0 if right else -1.0, right))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def _per_document_scores(tasks: list[str], write, num_samples: int) -> dict[str, list[dict]]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    manager = TaskManager(
        include_path=str(TASKS_DIR),
        include_defaults=False,
        metadata={"num_samples": num_samples, "max_seq_lengths": [512]},
    )
    results = simple_evaluate(model=ScriptedLM(write), tasks=tasks, task_manager=manager, log_samples=True)
    metric_names = ("exact_match", "acc", "512", "part_512", "strict_512")
    return {
        task: [{m: s[m] for m in metric_names if m in s} for s in samples]
        for task, samples in results["samples"].items()
    }


@pytest.fixture(scope="module")
def every_right_form_and_continuation():
    forms = [(form, text) for form in ("format", "bare", "newline") for text in CONTINUATIONS]
    return forms, _per_document_scores(
        GENERATION_TASKS,
        lambda query, doc: _answer(query, forms[doc["index"]][0]) + forms[doc["index"]][1],
        len(forms),
    )


@pytest.mark.parametrize("task", GENERATION_TASKS)
def test_a_right_answer_followed_by_typical_text_scores_1(task, every_right_form_and_continuation):
    forms, scores = every_right_form_and_continuation
    assert len(scores[task]) == len(forms)
    for (form, continuation), doc_scores in zip(forms, scores[task], strict=True):
        assert doc_scores and set(doc_scores.values()) == {1.0}, (form, continuation, doc_scores)


@pytest.fixture(scope="module")
def wrong_answers():
    return _per_document_scores(
        GENERATION_TASKS,
        lambda query, doc: _wrong(_answer(query, "format")) + CONTINUATIONS[doc["index"]],
        len(CONTINUATIONS),
    )


@pytest.mark.parametrize("task", GENERATION_TASKS)
def test_a_wrong_answer_scores_0(task, wrong_answers):
    for doc_scores in wrong_answers[task]:
        assert doc_scores and set(doc_scores.values()) == {0.0}, doc_scores


def test_query_tasks_score_every_query_of_one_sequence_per_document():
    scores = _per_document_scores(
        ["ssm_mqar", "ssm_mqar_mc", "ssm_zoology_mqar"],
        lambda query, doc: " " + query["target"] if doc["queries"].index(query) % 2 == 0 else " 000",
        3,
    )
    # v1: 100 documents were 25 sequences x 4 queries, with standard errors that took them as independent
    assert [len(scores[t]) for t in ("ssm_mqar", "ssm_mqar_mc", "ssm_zoology_mqar")] == [3, 3, 3]
    assert all(s["exact_match"] == 0.5 for s in scores["ssm_mqar"])  # queries 0 and 2 of 4
    assert all(s["acc"] == 1.0 for s in scores["ssm_mqar_mc"] + scores["ssm_zoology_mqar"])


def test_per_query_scores_average_within_a_document():
    [doc] = generate("ssm_mqar", "test", 1, num_queries=4)
    answers = [" " + q["target"] for q in doc["queries"]]
    assert exact_match(doc, [answers[0], " 999", answers[2] + ", x", answers[3]]) == {"exact_match": 0.75}
    results = []
    for i, query in enumerate(doc["queries"]):
        best = query["gold"] if i else (query["gold"] + 1) % len(query["choices"])
        results += [(0.0 if c == best else -1.0, False) for c in range(len(query["choices"]))]
    assert choice_per_query(doc, results) == {"acc": 0.75}
    assert greedy_per_query(doc, [(0.0, True), (0.0, False)]) == {"acc": 0.5}


# --- RULER's semantics (NVIDIA/RULER scripts/eval: postprocess_pred, string_match_all/_part) -------------


def _ruler(doc_target, generation: str) -> dict[str, float]:
    return by_length_generated({"target": doc_target, "length": 512}, [generation])


@pytest.mark.parametrize(
    ("target", "generation", "expected"),
    [
        # a generation that starts with a newline: RULER strips it
        ("1234567", "\n1234567.", {"512": 1.0, "part_512": 1.0, "strict_512": 1.0}),
        # values on separate lines: all found
        (["1111111", "2222222", "3333333"], "1111111\n2222222\n3333333", {"512": 1.0, "strict_512": 1.0}),
        # lower-case variable names: RULER compares case-insensitively; the strict metric does not
        (["ABCDE", "FGHIJ"], " abcde, fghij.", {"512": 1.0, "part_512": 1.0, "strict_512": 0.0}),
        # an extra digit appended: contained for RULER, not the answer for the strict metric
        ("1234567", " 12345678", {"512": 1.0, "part_512": 1.0, "strict_512": 0.0}),
        # one of two values: string_match_all 0.5, string_match_part 1
        (["1111111", "2222222"], " 1111111 only", {"512": 0.5, "part_512": 1.0, "strict_512": 0.5}),
        # the answer after a preamble: RULER finds it, the strict metric wants it first
        ("1234567", " The number is 1234567.", {"512": 1.0, "strict_512": 0.0}),
        # control characters become newlines before matching
        ("1234567", "\t1234567\x00", {"512": 1.0, "strict_512": 1.0}),
    ],
)
def test_long_context_metrics_give_rulers_result_on_the_edge_cases(target, generation, expected):
    scores = _ruler(target, generation)
    assert {k: scores[k] for k in expected} == expected


def test_rulers_task_scores_are_the_means_of_the_document_scores_times_100():
    docs = [
        (["1111111", "2222222"], "1111111"),
        (["ABCDE"], "abcde"),
        (["3333333"], "nothing"),
        (["4444444", "5555555", "6666666"], "5555555 6666666 4444444"),
    ]
    preds, refs = [g for _, g in docs], [t for t, _ in docs]
    # RULER's scripts/eval/synthetic/constants.py, written out: the mean over documents of the share (all)
    # or the max (part) of the references found, case-insensitively, times 100, rounded to 2 decimals
    ruler_all = round(
        sum(sum(r.lower() in p.lower() for r in ref) / len(ref) for p, ref in zip(preds, refs, strict=True))
        / len(preds)
        * 100,
        2,
    )
    ruler_part = round(
        sum(max(r.lower() in p.lower() for r in ref) for p, ref in zip(preds, refs, strict=True))
        / len(preds)
        * 100,
        2,
    )
    ours_all = [string_match_all(p, ref) for p, ref in zip(preds, refs, strict=True)]
    ours_part = [string_match_part(p, ref) for p, ref in zip(preds, refs, strict=True)]
    assert round(sum(ours_all) / len(ours_all) * 100, 2) == ruler_all == 62.5
    assert round(sum(ours_part) / len(ours_part) * 100, 2) == ruler_part == 75.0
