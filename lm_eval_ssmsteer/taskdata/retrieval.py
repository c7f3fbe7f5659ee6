"""Associative recall tasks: multi-query associative recall (Arora et al. 2023, Zoology), key-value
retrieval over UUID-like keys (Liu et al. 2023, Lost in the Middle) and induction (Olsson et al. 2022)."""

from __future__ import annotations

import random
import string

from lm_eval_ssmsteer.taskdata.core import Knob, TaskSpec, choices_with_gold, draw_in_split

HEX = "0123456789abcdef"


def _distinct(rng: random.Random, n: int, draw) -> list[str]:
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(draw(rng))
    return list(seen)


def make_mqar(rng: random.Random, split: str, knobs: dict, count_tokens) -> list[dict]:
    """One sequence, one document per query: the context holds the earlier queries with their answers."""
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
    docs = []
    for j, i in enumerate(order):
        asked = ", ".join(f"{keys[q]}: {values[q]}" for q in order[:j])
        context = f"{pairs} {asked + ', ' if asked else ''}{keys[i]}:"
        choices, gold = choices_with_gold(rng, values[i], values)
        docs.append(
            {
                "context": context,
                "target": values[i],
                "choices": choices,
                "gold": gold,
                "key": keys[i],
                "pair": i,
                "query": j,
            }
        )
    return docs


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
        "target": values[q],
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
        "target": follower,
        "choices": choices,
        "gold": gold,
        "trigger": sequence[i],
        "position": i,
    }


TASKS = {
    "ssm_mqar": TaskSpec(
        "ssm_mqar",
        "retrieval",
        "`key: value` pairs (3 letters: 3 digits), then queries of the keys at power-law gaps; one document "
        "per query (earlier queries answered in the context), accuracy per query.",
        "Arora et al. 2023, Zoology: MQAR",
        make_mqar,
        {
            "num_pairs": Knob(16, "key-value pairs", minimum=1),
            "num_queries": Knob(4, "queries per sequence (one document each)", minimum=1),
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
