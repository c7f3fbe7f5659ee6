"""RULER-faithful variants (Hsieh et al. 2024; NVIDIA/RULER scripts/data/synthetic/niah.py): RULER's
prompt template, answer prefix and needle sentence, and its two generated haystacks, which need no
download: ``noise`` (one paragraph of five plain sentences, repeated line after line; niah_single_1) and
``needle`` (a haystack made of distractor needles with other keys and values; niah_multikey_2).

As in RULER, the prompt plus the generation budget fill the length, and the needle is a line of its own
between haystack lines. Unlike RULER, the needle's depth is drawn before the haystack (the same depth at
every length), keys are a colour and an animal from the suite's lists (RULER: an adjective and a noun
from wonderwords), the generation budget is derived from the answer (RULER: 128 tokens), and the noise
haystack may end inside a paragraph (RULER adds whole paragraphs), so that lengths hit the target closely.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from lm_eval_ssmsteer.taskdata import haystack
from lm_eval_ssmsteer.taskdata.core import (
    Knob,
    LengthTooShort,
    TaskSpec,
    TokenCounter,
    draw_in_split,
    generation_budget,
    largest_fitting,
)

NOISE_PARAGRAPH = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
# RULER's niah template and answer prefix with one key and one value (its singular form)
INTRO = (
    "A special magic number is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the number afterwards."
)


def needle(key: str, value: str) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


def question(key: str) -> str:
    return (
        f"What is the special magic number for {key} mentioned in the provided text? "
        f"The special magic number for {key} mentioned in the provided text is"
    )


def _number(rng: random.Random) -> str:
    return str(rng.randint(10**6, 10**7 - 1))


def fit_lines(
    lines: Callable[[int], list[str]], real: str, depth: float, key: str, length: int, budget: int, count
) -> str:
    """The prompt with the most haystack units whose tokens plus `budget` stay within `length`, at least
    one: `lines(m)` are the haystack lines made of m units, and `real` goes in as a line of its own at
    the line boundary nearest `depth`."""

    def assemble(m: int) -> str:
        rows = lines(m)
        at = math.floor(depth * len(rows) + 0.5)
        return f"{INTRO}\n" + "\n".join(rows[:at] + [real] + rows[at:]) + f"\n{question(key)}"

    one = count(assemble(1))
    if one + budget > length:
        raise LengthTooShort(f"length {length} is below the minimum of {one + budget} tokens", one + budget)
    per_unit = max(1.0, (count(assemble(41)) - one) / 40)
    guess = 1 + int((length - budget - one) / per_unit)
    return assemble(largest_fitting(lambda m: count(assemble(m)) + budget <= length, guess, 1))


def _real_needle(rng: random.Random, split: str) -> tuple[str, str]:
    return draw_in_split(rng, split, lambda r: (haystack.key_word(r), _number(r)), key=repr)


def _doc(key: str, value: str, depth: float, context: str, knobs: dict, **extra) -> dict:
    completion = f"{value}."
    return {
        "context": context,
        "completion": completion,
        "target": value,
        "max_gen_toks": generation_budget(completion),
        "length": knobs["length"],
        "key": key,
        "depths": [depth],
        **extra,
    }


def make_noise(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    key, value = _real_needle(rng, split)
    depth = rng.random()

    def lines(m: int) -> list[str]:  # m noise sentences, five to a line
        sentences = [NOISE_PARAGRAPH[i % 5] for i in range(m)]
        return [" ".join(sentences[i : i + 5]) for i in range(0, m, 5)]

    budget = generation_budget(f"{value}.")
    context = fit_lines(lines, needle(key, value), depth, key, knobs["length"], budget, count_tokens)
    return _doc(key, value, depth, context, knobs)


def make_needle_haystack(rng: random.Random, split: str, knobs: dict, count_tokens: TokenCounter) -> dict:
    key, value = _real_needle(rng, split)
    depth = rng.random()
    stream = random.Random(rng.getrandbits(64))
    distractors: list[str] = []

    def lines(m: int) -> list[str]:  # m distractor needles: other keys, other values
        while len(distractors) < m:
            k, v = haystack.key_word(stream), _number(stream)
            if k != key and v != value:
                distractors.append(needle(k, v))
        return distractors[:m]

    budget = generation_budget(f"{value}.")
    context = fit_lines(lines, needle(key, value), depth, key, knobs["length"], budget, count_tokens)
    return _doc(key, value, depth, context, knobs)


def _length_knob() -> Knob:
    return Knob(512, "prompt plus generation budget in tokens of the evaluated model's tokenizer", minimum=1)


TASKS = {
    "ssm_ruler_niah_single": TaskSpec(
        "ssm_ruler_niah_single",
        "longctx",
        "RULER's niah_single_1: its template, needle and answer prefix, one needle in the repeated noise "
        "paragraph `The grass is green. The sky is blue. ...`.",
        "Hsieh et al. 2024, RULER niah_single_1 (noise haystack)",
        make_noise,
        {"length": _length_knob()},
        long_context=True,
    ),
    "ssm_ruler_niah_multikey": TaskSpec(
        "ssm_ruler_niah_multikey",
        "longctx",
        "RULER's niah_multikey_2: the haystack is distractor needles with other keys and values; the "
        "question asks for the one real key.",
        "Hsieh et al. 2024, RULER niah_multikey_2 (needle haystack)",
        make_needle_haystack,
        {"length": _length_knob()},
        long_context=True,
    ),
}
