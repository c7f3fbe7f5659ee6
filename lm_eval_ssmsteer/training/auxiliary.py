"""Training-only tasks: short formats that isolate one skill a suite task needs (issue 18).

They are not part of the suite: no lm-eval task, no calibration or test split, never scored. A run trains on
one only when it names it (``--weights aux_deferred_recall=W`` adds it to the mix); the monitor skips it.

``aux_deferred_recall``: every model here answers niah multiquery's first or second queried key and fills
the other slot with a needle that was not asked (docs/training.md, "What the lost slot reads"). The skill
missing is answering several keys asked together, in the question's order, after the question. This task
asks only that, in about 60 to 250 characters where a niah document takes 500 to 768:

    Pairs: qyt: 041, hfh: 113, uyk: 006. What are the numbers for hfh and qyt? The numbers for hfh and qyt
    are 113, 041.

Keys are distinct three-letter words and values distinct three-digit numbers, so each answer is the one
right string (``deferred_recall`` builds it from the pairs it wrote).
"""

from __future__ import annotations

import random
import string

AUX_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "aux_deferred_recall": {"num_pairs": (2, 16), "num_queries": (2, 4)},
}
AUX_WEIGHTS = {"aux_deferred_recall": 1.5}


def _word(n: int) -> str:
    letters = string.ascii_lowercase
    return letters[n // 676] + letters[n // 26 % 26] + letters[n % 26]


def deferred_recall(count: int, seed: int, num_pairs: int, num_queries: int) -> list[list[tuple[str, str]]]:
    """``count`` documents, each one (context, answer) prompt: ``num_pairs`` key-value pairs, then a
    question that asks ``min(num_queries, num_pairs)`` of the keys at once, answered in the asked order."""
    if not (
        isinstance(num_pairs, int) and isinstance(num_queries, int) and num_pairs >= 1 and num_queries >= 1
    ):
        raise ValueError(f"num_pairs={num_pairs!r}, num_queries={num_queries!r}: whole numbers >= 1")
    if num_pairs > 1000:
        raise ValueError(f"num_pairs={num_pairs}: at most 1000 (values are distinct three-digit numbers)")
    rng = random.Random(f"aux_deferred_recall/{seed}/{num_pairs}/{num_queries}")
    docs = []
    for _ in range(count):
        keys = [_word(n) for n in rng.sample(range(26**3), num_pairs)]
        values = [f"{n:03d}" for n in rng.sample(range(1000), num_pairs)]
        asked = rng.sample(range(num_pairs), min(num_queries, num_pairs))
        listed = " and ".join(keys[i] for i in asked)
        pairs = ", ".join(f"{k}: {v}" for k, v in zip(keys, values, strict=True))
        context = f"Pairs: {pairs}. What are the numbers for {listed}? The numbers for {listed} are"
        docs.append([(context, ", ".join(values[i] for i in asked) + ".")])
    return docs
