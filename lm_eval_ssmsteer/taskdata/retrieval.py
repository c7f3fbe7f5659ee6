"""Associative recall tasks: multi-query associative recall (Arora et al. 2023, Zoology; also in
Zoology's own form), key-value retrieval over UUID-like keys (Liu et al. 2023, Lost in the Middle) and
induction (Olsson et al. 2022)."""

from __future__ import annotations

import random
import string

from lm_eval_ssmsteer.taskdata.core import Knob, TaskSpec, choices_with_gold, draw_in_split, generation_budget

HEX = "0123456789abcdef"
# Zoology's MQAR draws keys from one half of the vocabulary and values from the other; here every key and
# every value is one character, a single token in the project tokenizer and in GPT-NeoX (" a", " Q")
ZOOLOGY_KEYS = string.ascii_lowercase
ZOOLOGY_VALUES = string.ascii_uppercase


def _distinct(rng: random.Random, n: int, draw) -> list[str]:
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(draw(rng))
    return list(seen)


def _query(context: str, value: str, **extra) -> dict:
    return {"context": context, "completion": value, "target": value, **extra}


def _with_queries(queries: list[dict], **extra) -> dict:
    """A document of several queries of one context: its top-level fields are those of its last query
    (the longest context), its budget the largest any query needs."""
    budget = max(generation_budget(q["completion"]) for q in queries)
    return {**queries[-1], "max_gen_toks": budget, "queries": queries, **extra}


def make_mqar(rng: random.Random, split: str, knobs: dict, count_tokens) -> dict:
    """One sequence, one document; each query asks one key, with the earlier queries answered before it.
    The document scores the share of its queries answered: standard errors count sequences, not queries."""
    n_pairs, n_queries, power = knobs["num_pairs"], knobs["num_queries"], knobs["power_a"]

    def draw(r: random.Random) -> tuple[list[str], list[str], list[int]]:
        keys = _distinct(r, n_pairs, lambda q: "".join(q.choice(string.ascii_lowercase) for _ in range(3)))
        values = _distinct(r, n_pairs, lambda q: "".join(q.choice(string.digits) for _ in range(3)))
        # Zoology draws key-query gaps from a power law: the weight of pair i decays with its distance
        # from the end of the pairs block; power_a = 0 queries uniformly.
        weights = [(n_pairs - i) ** -power for i in range(n_pairs)]
        order: list[int] = []
        while len(order) < n_queries:
            i = r.choices(range(n_pairs), weights)[0]
            if i not in order:
                order.append(i)
        return keys, values, order

    keys, values, order = draw_in_split(rng, split, draw, key=lambda item: repr(item))
    pairs = ", ".join(f"{k}: {v}" for k, v in zip(keys, values, strict=True)) + "."
    queries = []
    for j, i in enumerate(order):
        asked = ", ".join(f"{keys[q]}: {values[q]}" for q in order[:j])
        choices, gold = choices_with_gold(rng, values[i], values)
        context = f"{pairs} {asked + ', ' if asked else ''}{keys[i]}:"
        queries.append(_query(context, values[i], choices=choices, gold=gold, key=keys[i], pair=i))
    return _with_queries(queries)


def make_zoology_mqar(rng: random.Random, split: str, knobs: dict, count_tokens) -> dict:
    """Zoology's multiquery_ar: `num_pairs` key-value pairs, then a query region where every key is asked
    once, at a slot drawn from a power law (slot i of the region's length/2 - num_pairs slots with weight
    power_a * i ** (power_a - 1)); every other token is random. The token after a query is random too, so
    no answer appears in the context. One document per sequence, one loglikelihood request per query."""
    n_pairs, length, power = knobs["num_pairs"], knobs["length"], knobs["power_a"]
    slots = (length - 2 * n_pairs) // 2
    weights = [power * i ** (power - 1) for i in range(1, slots + 1)]

    def draw(r: random.Random) -> tuple[list[str], list[str], list[int]]:
        keys, values = r.sample(ZOOLOGY_KEYS, n_pairs), r.sample(ZOOLOGY_VALUES, n_pairs)
        free, gaps = list(range(slots)), []
        for _ in range(n_pairs):  # slots without replacement, each draw in proportion to the weights left
            gaps.append(free.pop(r.choices(range(len(free)), [weights[g] for g in free])[0]))
        return keys, values, gaps

    keys, values, gaps = draw_in_split(rng, split, draw, key=lambda item: repr(item))
    vocabulary = ZOOLOGY_KEYS + ZOOLOGY_VALUES
    tokens = [t for kv in zip(keys, values, strict=True) for t in kv]
    tokens += [rng.choice(vocabulary) for _ in range(length - len(tokens))]
    asked = {2 * n_pairs + 2 * gap: i for i, gap in enumerate(gaps)}
    for position, i in asked.items():
        tokens[position] = keys[i]
    queries = [
        _query(" ".join(tokens[: position + 1]), values[i], key=keys[i], position=position)
        for position, i in sorted(asked.items())
    ]
    return _with_queries(queries, sequence=" ".join(tokens))


def make_kv_retrieval(rng: random.Random, split: str, knobs: dict, count_tokens) -> dict:
    n = knobs["num_pairs"]

    def uuid_like(r: random.Random) -> str:
        return "".join(r.choice(HEX) for _ in range(4)) + "-" + "".join(r.choice(HEX) for _ in range(4))

    def draw(r: random.Random) -> tuple[list[str], list[str], int]:
        both = _distinct(r, 2 * n, uuid_like)
        return both[:n], both[n:], r.randrange(n)

    keys, values, q = draw_in_split(rng, split, draw, key=lambda item: repr(item))
    lines = [f"{k} -> {v}" for k, v in zip(keys, values, strict=True)]
    choices, gold = choices_with_gold(rng, values[q], values)
    return {
        "context": "\n".join(lines + [f"{keys[q]} ->"]),
        "completion": values[q],
        "target": values[q],
        "max_gen_toks": generation_budget(values[q]),
        "choices": choices,
        "gold": gold,
        "key": keys[q],
        "pair": q,
    }


def make_induction(rng: random.Random, split: str, knobs: dict, count_tokens) -> dict:
    """Random two-letter items with one trigger A seen once, followed by B; the sequence ends with A."""
    length = knobs["length"]
    items = [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]

    def draw(r: random.Random) -> tuple[list[str], int]:
        trigger, follower = r.sample(items, 2)
        others = [x for x in items if x != trigger]
        sequence = [r.choice(others) for _ in range(length)]
        i = r.randrange(length - 1)
        sequence[i], sequence[i + 1] = trigger, follower
        return sequence, i

    sequence, i = draw_in_split(rng, split, draw, key=lambda item: repr(item))
    follower = sequence[i + 1]
    choices, gold = choices_with_gold(rng, follower, [x for x in sequence if x != sequence[i]])
    return {
        "context": " ".join(sequence + [sequence[i]]),
        "completion": follower,
        "target": follower,
        "max_gen_toks": generation_budget(follower),
        "choices": choices,
        "gold": gold,
        "trigger": sequence[i],
        "position": i,
    }


TASKS = {
    "ssm_mqar": TaskSpec(
        "ssm_mqar",
        "retrieval",
        "`key: value` pairs (3 letters: 3 digits), then queries of the keys at power-law gaps, earlier "
        "queries answered in the context; one document per sequence, scored by its share of right queries.",
        "Arora et al. 2023, Zoology: MQAR",
        make_mqar,
        {
            "num_pairs": Knob(16, "key-value pairs (distinct 3-digit values)", minimum=1, maximum=1000),
            "num_queries": Knob(4, "queries per sequence", minimum=1),
            "power_a": Knob(
                0.0, "power-law exponent of the query choice (0 = uniform)", minimum=0.0, kind=float
            ),
        },
        constraint=lambda k: (
            None
            if k["num_queries"] <= k["num_pairs"]
            else f"knob 'num_queries' = {k['num_queries']} exceeds knob 'num_pairs' = {k['num_pairs']}: "
            "each key is queried once"
        ),
    ),
    "ssm_zoology_mqar": TaskSpec(
        "ssm_zoology_mqar",
        "retrieval",
        "Zoology's MQAR in text: single-character keys (a-z) and values (A-Z), `k v k v ...`, then every key "
        "queried once at power-law positions among random tokens, no answers in the context; accuracy of "
        "the greedy next token at each query, averaged per sequence.",
        "Arora et al. 2023, Zoology: multiquery_ar (random_non_queries)",
        make_zoology_mqar,
        {
            "num_pairs": Knob(8, "key-value pairs, every key queried once", minimum=1, maximum=26),
            "length": Knob(64, "tokens of the sequence (pairs and query region)", minimum=4),
            "power_a": Knob(
                0.01, "power-law exponent of the query slots (1 = uniform)", minimum=1e-6, kind=float
            ),
        },
        constraint=lambda k: (
            None
            if k["length"] >= 4 * k["num_pairs"] and k["length"] % 2 == 0
            else f"knob 'length' = {k['length']} must be even and at least 4 x knob 'num_pairs' = "
            f"{4 * k['num_pairs']} (the pairs and as many query slots as keys, as in Zoology)"
        ),
    ),
    "ssm_kv_retrieval": TaskSpec(
        "ssm_kv_retrieval",
        "retrieval",
        "Lines `xxxx-xxxx -> yyyy-yyyy` of UUID-like hex keys and values, then `key ->`; exact match.",
        "Liu et al. 2023, Lost in the Middle: key-value retrieval",
        make_kv_retrieval,
        {"num_pairs": Knob(12, "key-value lines", minimum=1)},
    ),
    "ssm_induction": TaskSpec(
        "ssm_induction",
        "retrieval",
        "Random two-letter items; trigger A appears once followed by B; the sequence ends with A: predict B.",
        "Olsson et al. 2022, induction heads; Gu & Dao 2023 (Mamba) induction task",
        make_induction,
        {"length": Knob(48, "items before the final trigger", minimum=2)},
    ),
}
