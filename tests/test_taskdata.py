"""The generated task data: deterministic, split-disjoint, answerable by construction, sized in tokens."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lm_eval_ssmsteer.taskdata import TASKS, TaskDataError, answer_text, generate
from lm_eval_ssmsteer.taskdata.core import split_of
from lm_eval_ssmsteer.taskdata.tokenizer import build_tokenizer

NEOX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gpt-neox-20b-tokenizer"
LONG = [t for t, spec in TASKS.items() if spec.long_context]
SHORT = [t for t, spec in TASKS.items() if not spec.long_context]


@pytest.fixture(scope="module")
def neox_count():
    if not NEOX.is_dir():
        pytest.skip(f"the GPT-NeoX tokenizer is not at {NEOX} (../shared beside the clone)")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(NEOX / "tokenizer.json"))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


@pytest.mark.parametrize("task", list(TASKS))
def test_same_seed_gives_identical_documents_and_another_seed_differs(task):
    a = generate(task, "test", 6, seed=3)
    b = generate(task, "test", 6, seed=3)
    c = generate(task, "test", 6, seed=4)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert [d["context"] for d in a] != [d["context"] for d in c]
    assert len(a) == 6 and all(d["split"] == "test" for d in a)


def _item(doc: dict) -> str:
    """What makes a document the item it is (the haystack aside): its answer-bearing content."""
    if doc["task"] in LONG:
        return json.dumps([sorted(re.findall(r"\d{5,}|[A-Z]{5}", doc["context"])), doc["target"]])
    return doc["context"]


@pytest.mark.parametrize(
    ("task", "knobs"),
    [
        ("ssm_copy", {"length": 2}),
        ("ssm_induction", {"length": 2}),
        ("ssm_kv_retrieval", {"num_pairs": 1}),
        ("ssm_mqar", {"num_pairs": 1, "num_queries": 1}),
        ("ssm_selective_copy", {"length": 3, "num_tokens": 2}),
        ("ssm_phonebook", {"num_entries": 3}),
        ("ssm_passkey", {"length": 200}),
        ("ssm_niah_single", {"length": 300}),
        ("ssm_variable_tracking", {"length": 300, "num_hops": 0}),
    ],
)
def test_test_items_never_appear_in_train_or_calibration(task, knobs):
    # small item spaces (676 two-letter strings, 90,000 pass keys...) would collide by chance
    # if splits were only seeded differently; the item-hash assignment rules that out
    test = {_item(d) for seed in range(2) for d in generate(task, "test", 60, seed=seed, **knobs)}
    other = {
        _item(d)
        for seed in range(3)
        for split in ("train", "calibration")
        for d in generate(task, split, 150, seed=seed, **knobs)
    }
    assert test and not test & other


def test_split_assignment_is_a_fixed_function_of_the_item():
    keys = [f"item-{i}" for i in range(2000)]
    shares = {s: sum(split_of(k) == s for k in keys) / len(keys) for s in ("train", "calibration", "test")}
    assert abs(shares["train"] - 0.8) < 0.04 and abs(shares["test"] - 0.1) < 0.03
    assert [split_of(k) for k in keys] == [split_of(k) for k in keys]


# --- reference solvers: each answers from the context alone, so every query is answerable ---


def _solve(doc: dict):
    task, ctx = doc["task"], doc["context"]
    if task == "ssm_copy":
        return re.fullmatch(r"\$ ([a-z]+) \|", ctx).group(1)
    if task == "ssm_selective_copy":
        return " ".join(t for t in ctx[:-2].split(" ") if t != ".")
    if task == "ssm_phonebook":
        book, queries = ctx.split("\n\n")
        name = queries.split("\n")[-1].rstrip(":")
        hits = [line.split(": ")[1] for line in book.split("\n") if line.split(": ")[0] == name]
        assert len(hits) == 1
        return hits[0]
    if task == "ssm_mqar":
        pairs_block, queries = ctx.split(". ", 1)
        table = dict(p.split(": ") for p in pairs_block.split(", "))
        assert len(table) == len(pairs_block.split(", "))
        return table[queries.split(", ")[-1].rstrip(":")]
    if task == "ssm_kv_retrieval":
        *lines, query = ctx.split("\n")
        table = dict(line.split(" -> ") for line in lines)
        return table[query.removesuffix(" ->")]
    if task == "ssm_induction":
        items = ctx.split(" ")
        seen = [i for i, x in enumerate(items[:-1]) if x == items[-1]]
        assert len(seen) == 1
        return items[seen[0] + 1]
    if task == "ssm_passkey":
        return re.search(r"The pass key is (\d+)\. Remember it\.", ctx).group(1)
    needles: dict[str, list[str]] = {}
    for key, value in re.findall(r"One of the special magic numbers for ([a-z-]+) is: (\d+)\.", ctx):
        needles.setdefault(key, []).append(value)
    question = ctx.split("\n")[-1]
    if task in ("ssm_niah_single", "ssm_niah_multikey"):
        [value] = needles[re.search(r"number for ([a-z-]+)\?", question).group(1)]
        return value
    if task == "ssm_niah_multivalue":
        return needles[re.search(r"numbers for ([a-z-]+)\?", question).group(1)]
    if task == "ssm_niah_multiquery":
        keys = re.search(r"numbers for (.+)\? ", question).group(1).split(" and ")
        return [needles[k][0] for k in keys]
    if task == "ssm_variable_tracking":
        value_of: dict[str, str] = {}
        for name, rhs in re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d+)\.", ctx):
            value_of[name] = value_of[rhs[4:]] if rhs.startswith("VAR ") else rhs
        wanted = re.search(r"assigned the value (\d+)\.", question).group(1)
        return [n for n, v in value_of.items() if v == wanted]
    raise AssertionError(task)


@pytest.mark.parametrize("task", list(TASKS))
def test_every_query_is_answerable_from_the_context_alone(task):
    knobs = {"length": 900} if task in LONG else {}
    for doc in generate(task, "test", 12, seed=1, **knobs):
        assert _solve(doc) == doc["target"], doc["context"]


@pytest.mark.parametrize("task", list(TASKS))
def test_answer_sits_where_it_should_and_nowhere_else(task):
    knobs = {"length": 900} if task in LONG else {}
    for doc in generate(task, "test", 12, seed=2, **knobs):
        ctx, target = doc["context"], doc["target"]
        if task == "ssm_copy":
            assert ctx.count(target) == 1
        elif task == "ssm_selective_copy":
            tokens = ctx[:-2].split(" ")
            assert [tokens[p] for p in doc["positions"]] == target.split(" ")
            assert all(t == "." for i, t in enumerate(tokens) if i not in doc["positions"])
        elif task == "ssm_phonebook":
            assert ctx.count(f"{doc['name']}: {target}") == 1 and ctx.count(target) == 1
        elif task == "ssm_mqar":
            assert ctx.count(f"{doc['key']}: {target}") == 1 and ctx.count(target) == 1
        elif task == "ssm_kv_retrieval":
            assert ctx.count(f"{doc['key']} -> {target}") == 1 and ctx.count(target) == 1
        elif task == "ssm_induction":
            assert ctx.split(" ").count(doc["trigger"]) == 2
            assert ctx.split(" ")[doc["position"] + 1] == target
        elif task == "ssm_passkey":
            assert ctx.count(target) == 2  # "The pass key is K. Remember it. K is the pass key."
        elif task == "ssm_variable_tracking":
            assert ctx.count(doc["value"]) == 2  # the first assignment and the question
            assert all(ctx.count(f"VAR {n} = ") == 1 for n in target)  # each assigned once
            assert [ctx.count(f"= VAR {n}.") for n in target] == [1] * (len(target) - 1) + [0]
        else:
            for value in target if isinstance(target, list) else [target]:
                assert ctx.count(value) == 1
        if "choices" in doc:
            assert doc["choices"][doc["gold"]] == target
            assert len(set(doc["choices"])) == len(doc["choices"]) >= 2


@pytest.mark.parametrize("task", LONG)
@pytest.mark.parametrize("length", [512, 1024, 2048])
def test_lengths_hit_the_target_within_5_percent_in_both_tokenizers(task, length, neox_count):
    for count in (len, neox_count):
        docs = generate(task, "test", 3, seed=0, count_tokens=count, length=length)
        for doc in docs:
            assert 0.95 * length <= count(doc["context"]) <= length, (task, length, count(doc["context"]))


def test_same_seed_places_the_same_needles_at_every_length():
    short, long = (generate("ssm_niah_multikey", "test", 4, length=n) for n in (600, 2000))
    assert [d["target"] for d in short] == [d["target"] for d in long]


def test_project_tokenizer_round_trips_every_task_text():
    tok = build_tokenizer()
    for task in TASKS:
        for doc in generate(task, "train", 3, seed=5):
            text = f"{doc['context']} {answer_text(doc)}\n"
            ids = tok.encode(text, add_special_tokens=False).ids
            assert len(ids) == len(text) and tok.decode(ids, skip_special_tokens=False) == text
            assert 2 not in ids  # no <unk>


@pytest.mark.parametrize(
    ("task", "knobs", "message"),
    [
        ("ssm_copy", {"lenght": 5}, "unknown knob 'lenght'"),
        ("ssm_copy", {"length": -3}, "'length' = -3 is below the minimum 2"),
        ("ssm_mqar", {"num_pairs": 2.5}, "'num_pairs' = 2.5 must be an integer"),
        ("ssm_mqar", {"num_pairs": 3, "num_queries": 5}, "'num_queries' = 5 exceeds knob 'num_pairs' = 3"),
        ("ssm_selective_copy", {"length": 4, "num_tokens": 6}, "'num_tokens' = 6 exceeds knob 'length' = 4"),
        ("ssm_niah_multikey", {"length": 100}, "length 100 is below the minimum of"),
    ],
)
def test_bad_knobs_fail_naming_the_key_the_value_and_what_is_allowed(task, knobs, message):
    with pytest.raises(TaskDataError, match=re.escape(message)):
        generate(task, "test", 2, **knobs)


def test_bad_split_and_count_fail_clearly():
    with pytest.raises(TaskDataError, match="unknown split 'dev'"):
        generate("ssm_copy", "dev", 2)
    with pytest.raises(TaskDataError, match="n = -1 must be an integer >= 0"):
        generate("ssm_copy", "test", -1)
    with pytest.raises(TaskDataError, match="unknown task 'ssm_nope'"):
        generate("ssm_nope", "test", 1)
