"""RULER-style long-context tasks (Hsieh et al. 2024): passkey (Mohtashami & Jaggi 2023), needles in a
haystack (single, multi-key, multi-value, multi-query) and variable tracking, each sized to a target
length in the evaluated model's tokenizer.

A document is intro + haystack with the needles at random depths + question. Needles are drawn first,
from the document's own stream, so one seed gives the same needles and depths at every length: scores
across lengths compare like with like. The haystack is then fitted word by word to the length.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from functools import cache

from lm_eval_ssmsteer.taskdata import haystack
from lm_eval_ssmsteer.taskdata.core import Knob, TaskDataError, TaskSpec, TokenCounter, choices_with_gold
from lm_eval_ssmsteer.taskdata.core import draw_in_split as _draw

DEFAULT_LENGTH = 512
MAGIC_INTRO = "Special magic numbers are hidden in the text below. Memorize them."


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _words(rng: random.Random, budget: int, word_tokens: Callable[[str], int]) -> list[str]:
    """Haystack words (sentences split at spaces) whose summed token counts reach `budget`."""
    words: list[str] = []
    total = 0
    while total < budget:
        for word in haystack.sentence(rng).split(" "):
            words.append(word)
            total += word_tokens(word)
    return words


def _place(words: list[str], needles: list[str], depths: list[float]) -> str:
    """The first len(words) words with each needle inserted at the sentence boundary nearest its depth."""
    boundaries = [0] + [i + 1 for i, w in enumerate(words) if w.endswith(".")]
    inserts: dict[int, list[str]] = {}
    for needle, depth in sorted(zip(needles, depths, strict=True), key=lambda nd: nd[1]):
        at = min(boundaries, key=lambda b: (abs(b - depth * len(words)), b))
        inserts.setdefault(at, []).append(needle)
    pieces: list[str] = []
    for i in range(len(words) + 1):
        pieces.extend(inserts.get(i, ()))
        if i < len(words):
            pieces.append(words[i])
    return " ".join(pieces)


def build_document(
    rng: random.Random,
    length: int,
    count_tokens: TokenCounter,
    intro: str,
    needles: list[str],
    question: str,
    depths: list[float] | None = None,
) -> str:
    """intro, haystack with needles (at random depths unless given), question: the longest such text
    within `length` tokens."""
    depths = depths if depths is not None else [rng.random() for _ in needles]

    def assemble(words: list[str]) -> str:
        return f"{intro}\n{_place(words, needles, depths)}\n{question}"

    base = count_tokens(assemble([]))
    if base > length:
        raise TaskDataError(
            f"length {length} is below the minimum of {base} tokens that this task's prompt needs with "
            f"these knobs in this tokenizer (its intro, needles and question without any haystack)"
        )
    word_tokens = cache(lambda w: count_tokens(" " + w))
    words = _words(random.Random(rng.getrandbits(64)), length - base, word_tokens)
    n = len(words)
    # token counts of words are nearly additive: correct the word count a few times by the measured excess
    for _ in range(8):
        excess = count_tokens(assemble(words[:n])) - length
        if excess <= 0:
            break
        n = max(0, n - max(1, excess * n // max(1, length - base)))
    while n > 0 and count_tokens(assemble(words[:n])) > length:
        n -= 1
    while n < len(words) and count_tokens(assemble(words[: n + 1])) <= length:
        n += 1
    return assemble(words[:n])


def _key_needles(rng: random.Random, split: str, n_keys: int, n_values: int) -> list[tuple[str, list[str]]]:
    """`n_keys` distinct keys with `n_values` distinct 7-digit values each, all drawn into `split`."""

    def draw(r: random.Random) -> list[tuple[str, list[str]]]:
        keys: list[str] = []
        while len(keys) < n_keys:
            k = haystack.key_word(r)
            if k not in keys:
                keys.append(k)
        values: dict[str, None] = {}  # insertion-ordered: a set's order changes with PYTHONHASHSEED
        while len(values) < n_keys * n_values:
            values[_number(r, 7)] = None
        ordered = sorted(values, key=lambda _: r.random())
        return [(k, ordered[i * n_values : (i + 1) * n_values]) for i, k in enumerate(keys)]

    return _draw(rng, split, draw, key=repr)


def _magic(key: str, value: str) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


def make_passkey(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    passkey = _draw(rng, split, lambda r: _number(r, 5), key=lambda v: f"passkey={v}")
    context = build_document(
        rng,
        knobs["length"],
        count_tokens,
        "A pass key is hidden in the text below. Remember it.",
        [f"The pass key is {passkey}. Remember it. {passkey} is the pass key."],
        "What is the pass key? The pass key is",
    )
    choices, gold = choices_with_gold(rng, passkey, [_number(rng, 5) for _ in range(3)])
    return {
        "context": context,
        "target": passkey,
        "choices": choices,
        "gold": gold,
        "length": knobs["length"],
    }


def make_niah_single(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    [(key, [value])] = _key_needles(rng, split, 1, 1)
    context = build_document(
        rng,
        knobs["length"],
        count_tokens,
        MAGIC_INTRO,
        [_magic(key, value)],
        f"What is the special magic number for {key}? The special magic number for {key} is",
    )
    choices, gold = choices_with_gold(rng, value, [_number(rng, 7) for _ in range(3)])
    return {
        "context": context,
        "target": value,
        "choices": choices,
        "gold": gold,
        "key": key,
        "length": knobs["length"],
    }


def make_niah_multikey(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    pairs = _key_needles(rng, split, knobs["num_needles"], 1)
    key, [value] = pairs[rng.randrange(len(pairs))]
    context = build_document(
        rng,
        knobs["length"],
        count_tokens,
        MAGIC_INTRO,
        [_magic(k, v) for k, [v] in pairs],
        f"What is the special magic number for {key}? The special magic number for {key} is",
    )
    others = [v for _, [v] in pairs] + [_number(rng, 7) for _ in range(3)]
    choices, gold = choices_with_gold(rng, value, others)
    return {
        "context": context,
        "target": value,
        "choices": choices,
        "gold": gold,
        "key": key,
        "length": knobs["length"],
    }


def make_niah_multivalue(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    [(key, values)] = _key_needles(rng, split, 1, knobs["num_values"])
    context = build_document(
        rng,
        knobs["length"],
        count_tokens,
        MAGIC_INTRO,
        [_magic(key, v) for v in values],
        f"What are all the special magic numbers for {key}? The special magic numbers for {key} are",
    )
    in_order = sorted(values, key=context.index)  # answers are listed as they appear in the text
    return {"context": context, "target": in_order, "key": key, "length": knobs["length"]}


def make_niah_multiquery(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    pairs = _key_needles(rng, split, knobs["num_needles"], 1)
    asked = rng.sample(range(len(pairs)), knobs["num_queries"])
    keys = " and ".join(pairs[i][0] for i in asked)
    context = build_document(
        rng,
        knobs["length"],
        count_tokens,
        MAGIC_INTRO,
        [_magic(k, v) for k, [v] in pairs],
        f"What are the special magic numbers for {keys}? The special magic numbers for {keys} are",
    )
    return {
        "context": context,
        "target": [pairs[i][1][0] for i in asked],
        "keys": [pairs[i][0] for i in asked],
        "length": knobs["length"],
    }


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
    needles: list[str] = []
    depths: list[float] = []
    for v, chain in chains:
        needles += [f"VAR {chain[0]} = {v}."] + [
            f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:], strict=False)
        ]
        depths += sorted(rng.random() for _ in chain)  # a chain's assignments stay in order
    context = build_document(
        rng,
        knobs["length"],
        count_tokens,
        "Memorize and track the chains of variable assignments hidden in the text below.",
        needles,
        f"Find all variables that are assigned the value {value}. Answer: the variables are",
        depths,
    )
    return {"context": context, "target": names, "value": value, "length": knobs["length"]}


def _length_knob() -> Knob:
    return Knob(DEFAULT_LENGTH, "prompt length in tokens of the evaluated model's tokenizer", minimum=1)


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
        "One needle `special magic number for <key>` (7 digits) in the haystack.",
        "Hsieh et al. 2024, RULER niah_single",
        make_niah_single,
        {"length": _length_knob()},
        long_context=True,
    ),
    "ssm_niah_multikey": TaskSpec(
        "ssm_niah_multikey",
        "longctx",
        "Several needles with different keys; the question asks for one key.",
        "Hsieh et al. 2024, RULER niah_multikey",
        make_niah_multikey,
        {"length": _length_knob(), "num_needles": Knob(4, "needles (distinct keys)", minimum=1)},
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
            "num_needles": Knob(4, "needles (distinct keys)", minimum=1),
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
            "num_chains": Knob(1, "independent chains", minimum=1),
            "num_hops": Knob(4, "assignments after the first in each chain", minimum=0),
        },
        long_context=True,
    ),
}
