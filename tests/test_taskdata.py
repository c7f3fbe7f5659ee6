"""The generated task data: deterministic, split-disjoint, answerable by construction, sized in tokens."""

from __future__ import annotations

import json
import random
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
    """What makes a document the item it is (the haystack and random filler aside)."""
    if doc["task"] in LONG:
        return json.dumps([doc["target"], doc.get("key"), doc.get("needles")])
    if doc["task"] == "ssm_zoology_mqar":
        tokens = doc["sequence"].split(" ")
        return json.dumps([tokens[: 2 * len(doc["queries"])], [q["position"] for q in doc["queries"]]])
    return doc["context"]


@pytest.mark.parametrize(
    ("task", "knobs"),
    [
        ("ssm_copy", {"length": 2}),
        ("ssm_induction", {"length": 2}),
        ("ssm_kv_retrieval", {"num_pairs": 1}),
        ("ssm_mqar", {"num_pairs": 1, "num_queries": 1}),
        ("ssm_zoology_mqar", {"num_pairs": 1, "length": 4}),
        ("ssm_selective_copy", {"length": 3, "num_tokens": 2}),
        ("ssm_mamba_selective_copy", {"length": 3, "num_tokens": 1}),
        ("ssm_phonebook", {"num_entries": 3}),
        ("ssm_passkey", {"length": 260}),
        ("ssm_niah_single", {"length": 300}),
        ("ssm_variable_tracking", {"length": 300, "num_hops": 0}),
        ("ssm_ruler_niah_single", {"length": 400}),
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


def _solve(task: str, ctx: str):
    if task == "ssm_copy":
        return re.fullmatch(r"\$ ([a-z]+) \|", ctx).group(1)
    if task == "ssm_selective_copy":
        return " ".join(t for t in ctx[:-2].split(" ") if t != "_")
    if task == "ssm_mamba_selective_copy":
        return " ".join(t for t in ctx.split(" ") if t not in ("_", "?"))
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
    if task == "ssm_zoology_mqar":
        tokens = ctx.split(" ")  # the pairs come first: a key's first occurrence is its pair
        return tokens[tokens.index(tokens[-1]) + 1]
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
    question = ctx.split("\n")[-1]
    if task.startswith("ssm_ruler_"):
        key = re.search(r"number for ([a-z-]+) mentioned", question).group(1)
        [value] = re.findall(rf"One of the special magic numbers for {key} is: (\d+)\.", ctx)
        return value
    needles: dict[str, list[str]] = {}
    for key, value in re.findall(r"A magic number for ([a-z-]+) is (\d+)\.", ctx):
        needles.setdefault(key, []).append(value)
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


def _queries(doc: dict) -> list[dict]:
    return doc.get("queries") or [doc]


@pytest.mark.parametrize("task", list(TASKS))
def test_every_query_is_answerable_from_the_context_alone(task):
    knobs = {"length": 900} if task in LONG else {}
    for doc in generate(task, "test", 12, seed=1, **knobs):
        for query in _queries(doc):
            assert _solve(task, query["context"]) == query["target"], query["context"]
        assert (doc["context"], doc["target"]) == (_queries(doc)[-1]["context"], _queries(doc)[-1]["target"])


@pytest.mark.parametrize("task", list(TASKS))
def test_answer_sits_where_it_should_and_nowhere_else(task):
    knobs = {"length": 900} if task in LONG else {}
    for doc in generate(task, "test", 12, seed=2, **knobs):
        ctx, target = doc["context"], doc["target"]
        if task == "ssm_copy":
            assert ctx.count(target) == 1
        elif task in ("ssm_selective_copy", "ssm_mamba_selective_copy"):
            tokens = [t for t in ctx.split(" ") if t not in ("|", "?")]  # the separator, the markers
            assert [tokens[p] for p in doc["positions"]] == target.split(" ")
            assert all(t == "_" for i, t in enumerate(tokens) if i not in doc["positions"])
        elif task == "ssm_phonebook":
            assert ctx.count(f"{doc['name']}: {target}") == 1 and ctx.count(target) == 1
        elif task == "ssm_mqar":
            for query in doc["queries"]:
                context = query["context"]
                assert context.count(f"{query['key']}: {query['target']}") == 1
                assert context.count(query["target"]) == 1 and context.endswith(f" {query['key']}:")
        elif task == "ssm_zoology_mqar":
            tokens = doc["sequence"].split(" ")
            n = len(doc["queries"])
            assert len(tokens) == 64 and len({q["key"] for q in doc["queries"]}) == n  # every key once
            for query in doc["queries"]:
                pair = tokens[: 2 * n].index(query["key"])
                assert pair % 2 == 0 and tokens[pair + 1] == query["target"]
                assert query["position"] >= 2 * n and (query["position"] - 2 * n) % 2 == 0
                assert query["context"] == " ".join(tokens[: query["position"] + 1])
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
        for query in _queries(doc):
            if "choices" in query:
                assert query["choices"][query["gold"]] == query["target"]
                assert len(set(query["choices"])) == len(query["choices"]) >= 2


@pytest.mark.parametrize("task", LONG)
@pytest.mark.parametrize("length", [512, 1024, 2048])
def test_prompt_plus_generation_budget_hits_the_length_within_5_percent_in_both_tokenizers(
    task, length, neox_count
):
    # as in RULER, the length counts the prompt and the tokens to generate
    for count in (len, neox_count):
        docs = generate(task, "test", 3, seed=0, count_tokens=count, length=length)
        for doc in docs:
            used = count(doc["context"]) + doc["max_gen_toks"]
            if task == "ssm_ruler_niah_multikey":  # whole distractor needles: within one of the length
                line = count("\n" + doc["context"].split("\n")[1])
                assert length - line < used <= length, (task, length, used)
            else:
                assert 0.95 * length <= used <= length, (task, length, used)


def test_same_seed_places_the_same_needles_at_the_same_depths_at_every_length():
    short, long = (generate("ssm_niah_multikey", "test", 4, length=n) for n in (600, 2000))
    assert [(d["target"], d["needles"], d["depths"]) for d in short] == [
        (d["target"], d["needles"], d["depths"]) for d in long
    ]


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
        # knobs no document can honour: the allowed range, or the least length
        ("ssm_mqar", {"num_pairs": 1001, "num_queries": 1}, "'num_pairs' = 1001 is above the maximum 1000"),
        ("ssm_zoology_mqar", {"num_pairs": 27, "length": 200}, "allowed 1..26"),
        ("ssm_zoology_mqar", {"num_pairs": 8, "length": 30}, "at least 4 x knob 'num_pairs' = 32"),
        ("ssm_zoology_mqar", {"length": 65}, "'length' = 65 must be even"),
        ("ssm_niah_multikey", {"num_needles": 41, "length": 9000}, "allowed 1..40 (needles (distinct"),
        ("ssm_niah_multivalue", {"num_values": 12}, "length 512 is below the minimum of"),
        ("ssm_ruler_niah_single", {"length": 300}, "length 300 is below the minimum of"),
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


# --- v2 properties: filler between needles, honest choices, budgets from the answer ------------------------

MULTI_NEEDLE = ["ssm_niah_multikey", "ssm_niah_multivalue", "ssm_niah_multiquery", "ssm_variable_tracking"]


def _needle_boundaries(doc: dict) -> tuple[list[int], int]:
    """Per needle (in doc["needles"] order), the number of full filler sentences before it, and the total."""
    haystack = doc["context"].split("\n")[1]
    for i, needle in enumerate(doc["needles"]):
        assert haystack.count(needle) == 1
        haystack = haystack.replace(needle, f"<needle{i}>")
    before, filler = {}, 0
    for word in haystack.split(" "):
        if word.startswith("<needle"):
            before[int(word[7:-1])] = filler
        elif word.endswith("."):
            filler += 1
    return [before[i] for i in range(len(doc["needles"]))], filler


def _honoured(boundaries: list[int], depths: list[float], sentences: int) -> None:
    """Every two needles have filler between them; a needle sits at the boundary nearest its depth, unless
    needles met there: then within one boundary per other needle (they keep their depth order)."""
    assert sentences >= max(1, len(boundaries) - 1)
    ordered = sorted(range(len(depths)), key=lambda i: depths[i])
    assert all(boundaries[b] - boundaries[a] >= 1 for a, b in zip(ordered, ordered[1:], strict=False))
    for b, depth in zip(boundaries, depths, strict=True):
        assert abs(b - depth * sentences) <= 0.5 + len(depths) - 1, (b, depth, sentences)


@pytest.mark.parametrize("task", ["ssm_passkey", "ssm_niah_single", *MULTI_NEEDLE])
def test_needles_are_separated_by_filler_and_sit_at_their_depths_at_512_character_tokens(task):
    errors, first_at_start = [], 0
    for doc in generate(task, "test", 50, seed=0, length=512):
        boundaries, sentences = _needle_boundaries(doc)
        _honoured(boundaries, doc["depths"], sentences)
        errors += [abs(b - d * sentences) for b, d in zip(boundaries, doc["depths"], strict=True)]
        first_at_start += min(boundaries) == 0
    # in sentences (5 to 14 of them at 512 characters): rounding alone averages a quarter
    assert sum(errors) / len(errors) < 0.6
    if task == "ssm_niah_multikey":  # v1: 42 of 50, with no filler to put before the first needle
        assert first_at_start < 20


@pytest.mark.parametrize("task", MULTI_NEEDLE)
def test_depths_hold_at_long_lengths_in_the_neox_tokenizer(task, neox_count):
    for doc in generate(task, "test", 3, seed=4, count_tokens=neox_count, length=4096):
        boundaries, sentences = _needle_boundaries(doc)
        _honoured(boundaries, doc["depths"], sentences)
        assert all(abs(b / sentences - d) < 0.02 for b, d in zip(boundaries, doc["depths"], strict=True))


def test_keys_of_one_document_share_no_word_and_never_occur_in_the_haystack():
    from lm_eval_ssmsteer.taskdata import haystack

    filler = {w.strip(".").lower() for _ in range(2000) for w in haystack.sentence(random.Random(_)).split()}
    assert not filler & set(haystack.KEY_COLOURS + haystack.KEY_ANIMALS)
    for doc in generate("ssm_niah_multikey", "test", 50, seed=0, num_needles=8, length=1200):
        words = [w for needle in doc["needles"] for w in needle.split(" ")[4].split("-")]
        assert len(words) == len(set(words)) == 16


@pytest.mark.parametrize(
    ("task", "knobs"),
    [
        ("ssm_copy", {}),
        ("ssm_copy", {"length": 2}),
        ("ssm_copy", {"length": 3}),
        ("ssm_selective_copy", {"length": 6, "num_tokens": 3}),
        ("ssm_phonebook", {}),
        ("ssm_mqar", {}),
        ("ssm_kv_retrieval", {}),
        ("ssm_induction", {}),
        ("ssm_passkey", {"length": 300}),
        ("ssm_niah_single", {"length": 300}),
        ("ssm_niah_multikey", {"length": 600}),
    ],
)
def test_no_choice_is_a_prefix_of_its_gold(task, knobs):
    # a prefix's log-likelihood is at least the gold's: v1's copy choices had one in 3 of 100 documents
    for doc in generate(task, "test", 100, seed=0, **knobs):
        for query in _queries(doc):
            gold = query["choices"][query["gold"]]
            others = [c for i, c in enumerate(query["choices"]) if i != query["gold"]]
            assert not [c for c in others if gold.startswith(c) or c.startswith(gold)], query["choices"]
            if task == "ssm_copy" and not knobs:  # other near-copies replace the prefixes
                assert len(query["choices"]) == 4


def test_generation_budget_comes_from_the_answer():
    from lm_eval_ssmsteer.taskdata.core import ANSWER_MARGIN

    for task in TASKS:
        for doc in generate(task, "test", 3, seed=0, **({"length": 700} if task in LONG else {})):
            longest = max(len(" " + q["completion"]) for q in _queries(doc))
            assert doc["max_gen_toks"] == longest + ANSWER_MARGIN
    # v1: a copy longer than 160 letters, or 11 values, could not be written within max_gen_toks 160 / 96
    [copy] = generate("ssm_copy", "test", 1, length=300)
    assert copy["max_gen_toks"] >= len(" " + copy["string"] + " .")
    [values] = generate("ssm_niah_multivalue", "test", 1, num_values=12, length=2048)
    assert values["max_gen_toks"] >= len(" " + ", ".join(values["target"]) + ".") > 96


@pytest.fixture(scope="module")
def neox_hf_count():
    if not NEOX.is_dir():
        pytest.skip(f"the GPT-NeoX tokenizer is not at {NEOX} (../shared beside the clone)")
    from lm_eval_ssmsteer.taskdata.harness import token_counter

    return token_counter({"tokenizer": str(NEOX)})  # what lm-eval runs measure lengths with


@pytest.mark.parametrize("task", LONG)
def test_documents_built_in_threads_are_the_documents_built_in_order(task, neox_hf_count):
    one = generate(task, "test", 6, seed=5, count_tokens=neox_hf_count, length=1024)
    four = generate(task, "test", 6, seed=5, count_tokens=neox_hf_count, workers=4, length=1024)
    assert json.dumps(four, sort_keys=True) == json.dumps(one, sort_keys=True)


def test_threads_report_too_short_documents_as_in_order_and_bad_counts_are_refused(monkeypatch):
    with pytest.raises(TaskDataError) as serial:
        generate("ssm_passkey", "test", 5, length=40)
    with pytest.raises(TaskDataError) as threaded:
        generate("ssm_passkey", "test", 5, workers=3, length=40)
    assert str(threaded.value) == str(serial.value)
    with pytest.raises(TaskDataError, match="workers = 0 must be an integer >= 1"):
        generate("ssm_passkey", "test", 5, workers=0)
    from lm_eval_ssmsteer.taskdata.harness import build_threads

    monkeypatch.setenv("SSMSTEER_TASKDATA_THREADS", "3")
    assert build_threads() == 3
    monkeypatch.setenv("SSMSTEER_TASKDATA_THREADS", "many")
    with pytest.raises(
        TaskDataError, match="SSMSTEER_TASKDATA_THREADS='many': allowed values are integers >= 1"
    ):
        build_threads()
