"""RULER-style long-context tasks (Hsieh et al. 2024): passkey (Mohtashami & Jaggi 2023), needles in a
haystack (single, multi-key, multi-value, multi-query) and variable tracking, each sized to a target
length in the evaluated model's tokenizer.

A document is intro + haystack with the needles at their depths + question; as in RULER, the prompt and
the generation budget together fill the length. Needles and their depths (uniform in [0, 1], as RULER's
random depths) are drawn first, from the document's own stream, so one seed gives the same needles at
the same depths at every length: scores across lengths compare like with like. The haystack is fitted
word by word to the length, with at least one full sentence between every two needles (k - 1 for k
needles, and one at least; a shorter length is refused, naming the minimum), and every needle sits
between two sentences: at the boundary nearest its depth, or, where needles would meet, at the nearest
free one in depth order, so that filler separates every two needles.
"""

from __future__ import annotations

import math
import random
import string
from functools import cache

from lm_eval_ssmsteer.taskdata import haystack
from lm_eval_ssmsteer.taskdata.core import (
    Knob,
    LengthTooShort,
    TaskSpec,
    TokenCounter,
    choices_with_gold,
    generation_budget,
    largest_fitting,
)
from lm_eval_ssmsteer.taskdata.core import draw_in_split as _draw

DEFAULT_LENGTH = 512
MAGIC_INTRO = "Memorize the magic numbers hidden in this text."


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def needle_boundaries(depths: list[float], sentences: int) -> list[int]:
    """Per depth, the sentence boundary (0..sentences, boundary j follows the j-th full sentence) of its
    needle: round(depth * sentences), moved to the nearest free boundary in depth order where needles would
    share one. Needs sentences >= len(depths) - 1; with more, every two needles have filler between them."""
    order = sorted(range(len(depths)), key=lambda i: depths[i])
    at = [0] * len(depths)
    previous = -1
    for i in order:  # forward: each needle after the one before
        at[i] = previous = max(math.floor(depths[i] * sentences + 0.5), previous + 1)
    following = sentences + 1
    for i in reversed(order):  # backward: none past the last boundary
        at[i] = following = min(at[i], following - 1)
    return at


def _place(words: list[str], needles: list[str], depths: list[float]) -> str:
    """`words` with each needle inserted between sentences, at needle_boundaries of its depth."""
    boundaries = [0] + [i + 1 for i, w in enumerate(words) if w.endswith(".")]
    inserts: dict[int, list[str]] = {}
    at = needle_boundaries(depths, len(boundaries) - 1)
    for needle, boundary in sorted(zip(needles, at, strict=True), key=lambda nb: nb[1]):
        inserts.setdefault(boundaries[boundary], []).append(needle)
    pieces: list[str] = []
    for i in range(len(words) + 1):
        pieces.extend(inserts.get(i, ()))
        if i < len(words):
            pieces.append(words[i])
    return " ".join(pieces)


def build_document(
    rng: random.Random,
    length: int,
    budget: int,
    count_tokens: TokenCounter,
    intro: str,
    needles: list[str],
    question: str,
    depths: list[float],
) -> str:
    """intro, haystack with the needles at `depths`, question: the longest such text whose tokens plus
    the generation `budget` stay within `length`; at least max(1, len(needles) - 1) filler sentences."""
    stream = random.Random(rng.getrandbits(64))
    words: list[str] = []

    def grow(n_words: int) -> None:
        while len(words) < n_words:
            words.extend(haystack.sentence(stream).split(" "))

    def assemble(n_words: int) -> str:
        grow(n_words)
        return f"{intro}\n{_place(words[:n_words], needles, depths)}\n{question}"

    while sum(w.endswith(".") for w in words) < max(1, len(needles) - 1):
        words.extend(haystack.sentence(stream).split(" "))
    least = len(words)
    minimum = count_tokens(assemble(least)) + budget
    if minimum > length:
        raise LengthTooShort(f"length {length} is below the minimum of {minimum} tokens", minimum)
    room = length - budget
    # token counts of words are nearly additive: the guess sums them; measuring the text corrects it
    word_tokens = cache(lambda w: count_tokens(" " + w))
    guess, total = least, minimum - budget
    while total <= room:
        grow(guess + 1)
        total += word_tokens(words[guess])
        guess += 1
    return assemble(largest_fitting(lambda n: count_tokens(assemble(n)) <= room, guess - 1, least))


def _key_needles(rng: random.Random, split: str, n_keys: int, n_values: int) -> list[tuple[str, list[str]]]:
    """`n_keys` keys sharing no word, with `n_values` distinct 7-digit values each, drawn into `split`."""

    def draw(r: random.Random) -> list[tuple[str, list[str]]]:
        keys = haystack.key_words(r, n_keys)
        values: dict[str, None] = {}  # insertion-ordered: a set's order changes with PYTHONHASHSEED
        while len(values) < n_keys * n_values:
            values[_number(r, 7)] = None
        ordered = sorted(values, key=lambda _: r.random())
        return [(k, ordered[i * n_values : (i + 1) * n_values]) for i, k in enumerate(keys)]

    return _draw(rng, split, draw, key=repr)


def _magic(key: str, value: str) -> str:
    return f"A magic number for {key} is {value}."


def _depths(rng: random.Random, k: int) -> list[float]:
    return [rng.random() for _ in range(k)]


def _doc(
    rng: random.Random,
    knobs: dict,
    count_tokens: TokenCounter,
    intro: str,
    needles: list[str],
    depths: list[float],
    question: str,
    target: str | list[str],
    completion: str,
    **extra,
) -> dict:
    budget = generation_budget(completion)
    context = build_document(rng, knobs["length"], budget, count_tokens, intro, needles, question, depths)
    return {
        "context": context,
        "completion": completion,
        "target": target,
        "max_gen_toks": budget,
        "length": knobs["length"],
        "needles": needles,
        "depths": depths,
        **extra,
    }


def make_passkey(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    passkey = _draw(rng, split, lambda r: _number(r, 5), key=lambda v: f"passkey={v}")
    depths = _depths(rng, 1)
    choices, gold = choices_with_gold(rng, passkey, [_number(rng, 5) for _ in range(3)])
    return _doc(
        rng,
        knobs,
        count_tokens,
        "A pass key is hidden in the text below. Remember it.",
        [f"The pass key is {passkey}. Remember it. {passkey} is the pass key."],
        depths,
        "What is the pass key? The pass key is",
        passkey,
        f"{passkey}.",
        choices=choices,
        gold=gold,
    )


def _one_key_doc(rng, knobs, count_tokens, needles, depths, key, value, others) -> dict:
    """A document that asks the value of one key (among `needles`), with choices from `others`."""
    choices, gold = choices_with_gold(rng, value, others)
    return _doc(
        rng,
        knobs,
        count_tokens,
        MAGIC_INTRO,
        needles,
        depths,
        f"What is the magic number for {key}? The magic number for {key} is",
        value,
        f"{value}.",
        choices=choices,
        gold=gold,
        key=key,
    )


def make_niah_single(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    [(key, [value])] = _key_needles(rng, split, 1, 1)
    depths = _depths(rng, 1)
    others = [_number(rng, 7) for _ in range(3)]
    return _one_key_doc(rng, knobs, count_tokens, [_magic(key, value)], depths, key, value, others)


def make_niah_multikey(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    pairs = _key_needles(rng, split, knobs["num_needles"], 1)
    depths = _depths(rng, len(pairs))
    key, [value] = pairs[rng.randrange(len(pairs))]
    others = [v for _, [v] in pairs] + [_number(rng, 7) for _ in range(3)]
    needles = [_magic(k, v) for k, [v] in pairs]
    return _one_key_doc(rng, knobs, count_tokens, needles, depths, key, value, others)


def make_niah_multivalue(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    [(key, values)] = _key_needles(rng, split, 1, knobs["num_values"])
    depths = _depths(rng, len(values))
    in_order = [v for _, v in sorted(zip(depths, values, strict=True))]  # listed as they appear in the text
    return _doc(
        rng,
        knobs,
        count_tokens,
        MAGIC_INTRO,
        [_magic(key, v) for v in values],
        depths,
        f"What are all the magic numbers for {key}? The magic numbers for {key} are",
        in_order,
        ", ".join(in_order) + ".",
        key=key,
    )


def make_niah_multiquery(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    pairs = _key_needles(rng, split, knobs["num_needles"], 1)
    depths = _depths(rng, len(pairs))
    asked = rng.sample(range(len(pairs)), knobs["num_queries"])
    keys = " and ".join(pairs[i][0] for i in asked)
    answers = [pairs[i][1][0] for i in asked]
    return _doc(
        rng,
        knobs,
        count_tokens,
        MAGIC_INTRO,
        [_magic(k, v) for k, [v] in pairs],
        depths,
        f"What are the magic numbers for {keys}? The magic numbers for {keys} are",
        answers,
        ", ".join(answers) + ".",
        keys=[pairs[i][0] for i in asked],
    )


def make_variable_tracking(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    n_chains, n_hops = knobs["num_chains"], knobs["num_hops"]

    def draw(r: random.Random) -> list[tuple[str, list[str]]]:
        names: list[str] = []
        while len(names) < n_chains * (n_hops + 1):
            name = "".join(r.choice(string.ascii_uppercase) for _ in range(5))
            if name not in names:
                names.append(name)
        values: set[str] = set()
        while len(values) < n_chains:
            values.add(_number(r, 5))
        return [(v, names[c * (n_hops + 1) : (c + 1) * (n_hops + 1)]) for c, v in enumerate(sorted(values))]

    chains = _draw(rng, split, draw, key=repr)
    value, names = chains[rng.randrange(n_chains)]
    # sorted depths go to the chains' assignments in a random interleaving that keeps each chain in order
    turns = [c for c, (_, chain) in enumerate(chains) for _ in chain]
    rng.shuffle(turns)
    ordered_depths = iter(sorted(_depths(rng, len(turns))))
    chain_depths: list[list[float]] = [[] for _ in chains]
    for c in turns:
        chain_depths[c].append(next(ordered_depths))
    needles: list[str] = []
    depths: list[float] = []
    for (v, chain), chain_depth in zip(chains, chain_depths, strict=True):
        needles += [f"VAR {chain[0]} = {v}."] + [
            f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:], strict=False)
        ]
        depths += chain_depth
    return _doc(
        rng,
        knobs,
        count_tokens,
        "Memorize and track the chains of variable assignments hidden in the text below.",
        needles,
        depths,
        f"Find all variables that are assigned the value {value}. Answer: the variables are",
        names,
        ", ".join(names) + ".",
        value=value,
    )


def _length_knob() -> Knob:
    return Knob(
        DEFAULT_LENGTH,
        "prompt plus generation budget in tokens of the evaluated model's tokenizer",
        minimum=1,
    )


def _keys_knob(default: int, help: str) -> Knob:
    return Knob(default, f"{help}; keys share no word", minimum=1, maximum=haystack.MAX_KEYS)


TASKS = {
    "ssm_passkey": TaskSpec(
        "ssm_passkey",
        "longctx",
        "A 5-digit pass key stated once in filler text; `The pass key is` -> key.",
        "Mohtashami & Jaggi 2023 (passkey retrieval); RULER",
        make_passkey,
        {"length": _length_knob()},
        long_context=True,
    ),
    "ssm_niah_single": TaskSpec(
        "ssm_niah_single",
        "longctx",
        "One needle `A magic number for <key> is <7 digits>.` in the haystack.",
        "Hsieh et al. 2024, RULER niah_single",
        make_niah_single,
        {"length": _length_knob()},
        long_context=True,
    ),
    "ssm_niah_multikey": TaskSpec(
        "ssm_niah_multikey",
        "longctx",
        "Several needles with different keys; the question asks for one key.",
        "Hsieh et al. 2024, RULER niah_multikey_1",
        make_niah_multikey,
        {"length": _length_knob(), "num_needles": _keys_knob(4, "needles (distinct keys)")},
        long_context=True,
    ),
    "ssm_niah_multivalue": TaskSpec(
        "ssm_niah_multivalue",
        "longctx",
        "One key with several values spread over the haystack; find all.",
        "Hsieh et al. 2024, RULER niah_multivalue",
        make_niah_multivalue,
        {"length": _length_knob(), "num_values": Knob(4, "values of the key", minimum=1)},
        long_context=True,
    ),
    "ssm_niah_multiquery": TaskSpec(
        "ssm_niah_multiquery",
        "longctx",
        "Several needles; the question asks for several keys at once.",
        "Hsieh et al. 2024, RULER niah_multiquery",
        make_niah_multiquery,
        {
            "length": _length_knob(),
            "num_needles": _keys_knob(4, "needles (distinct keys)"),
            "num_queries": Knob(2, "keys asked for", minimum=1),
        },
        long_context=True,
        constraint=lambda k: (
            None
            if k["num_queries"] <= k["num_needles"]
            else f"knob 'num_queries' = {k['num_queries']} exceeds knob 'num_needles' = {k['num_needles']}"
        ),
    ),
    "ssm_variable_tracking": TaskSpec(
        "ssm_variable_tracking",
        "longctx",
        "Chains `VAR A = 12345.`, `VAR B = VAR A.` ... in the haystack; name all variables with the value.",
        "Hsieh et al. 2024, RULER variable tracking (vt)",
        make_variable_tracking,
        {
            "length": _length_knob(),
            "num_chains": Knob(1, "independent chains", minimum=1, maximum=90_000),
            "num_hops": Knob(4, "assignments after the first in each chain", minimum=0),
        },
        long_context=True,
    ),
}
