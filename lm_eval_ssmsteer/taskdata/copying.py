"""Copying tasks: copy a string (Jelassi et al. 2024, "Repeat After Me"), selective copying (Gu & Dao
2023, the Mamba paper; also in the paper's own setting) and the phone book lookup (Jelassi et al. 2024).

Copies end as in Jelassi et al.'s `$ s | s .`: the completion is the answer followed by " .", the
boundary a model meets after a right answer."""

from __future__ import annotations

import random
import string

from lm_eval_ssmsteer.taskdata.core import Knob, TaskSpec, choices_with_gold, draw_in_split, generation_budget

LETTERS = string.ascii_lowercase
NOISE = "_"  # not ".", which ends every copy
END = " ."
# the Mamba paper's selective copying: a vocabulary of 16, i.e. 14 data tokens, the noise token and the
# marker; M markers follow the sequence, one for each data token to reproduce
PAPER_DATA = LETTERS[:14]
PAPER_MARKER = "?"

FIRST_NAMES = (
    "Ada",
    "Alan",
    "Alice",
    "Amos",
    "Anna",
    "Basil",
    "Beatrice",
    "Bruno",
    "Carla",
    "Cecil",
    "Clara",
    "Daniel",
    "Delia",
    "Edgar",
    "Edith",
    "Elena",
    "Felix",
    "Flora",
    "Frank",
    "Gemma",
    "Gideon",
    "Grace",
    "Hans",
    "Helen",
    "Hugo",
    "Ida",
    "Isaac",
    "Ivy",
    "Jonas",
    "Julia",
    "Karl",
    "Laura",
    "Leon",
    "Lydia",
    "Marco",
    "Maya",
    "Nina",
    "Oscar",
    "Paula",
    "Rosa",
)
LAST_NAMES = (
    "Abbott",
    "Baker",
    "Barnes",
    "Becker",
    "Brandt",
    "Carter",
    "Dalton",
    "Ellis",
    "Fischer",
    "Foster",
    "Garner",
    "Hale",
    "Hartley",
    "Holt",
    "Jensen",
    "Keller",
    "Lambert",
    "Lowe",
    "Marsh",
    "Meyer",
    "Morrow",
    "Nash",
    "Norris",
    "Olsen",
    "Parker",
    "Quinn",
    "Reed",
    "Russo",
    "Sawyer",
    "Schmidt",
    "Shaw",
    "Stone",
    "Tanner",
    "Turner",
    "Vance",
    "Walsh",
    "Weber",
    "Wolfe",
    "Young",
    "Zeller",
)


def _corruptions(rng: random.Random, s: str) -> list[str]:
    """Three distinct near-copies of `s` (swaps of unequal neighbours, substitutions, deletions): the
    distractors of the copy choices. No deletion is a prefix of `s` (deleting its last letter, or one of
    a run at its end), whose log-likelihood would be at least the copy's."""
    swaps = [s[:i] + s[i + 1] + s[i] + s[i + 2 :] for i in range(len(s) - 1) if s[i] != s[i + 1]]
    j = rng.randrange(len(s))
    substitutions = [s[:j] + c + s[j + 1 :] for c in LETTERS if c != s[j]]
    deletions = [d for d in (s[:k] + s[k + 1 :] for k in range(len(s))) if not s.startswith(d)]
    picked: list[str] = []
    for pool in (swaps, substitutions, deletions, substitutions):
        options = [x for x in pool if x != s and x not in picked]
        if options:
            picked.append(rng.choice(options))
    return picked[:3]


def make_copy(rng: random.Random, split: str, knobs: dict, count_tokens) -> dict:
    n = knobs["length"]
    s = draw_in_split(rng, split, lambda r: "".join(r.choice(LETTERS) for _ in range(n)), key=lambda s: s)
    choices, gold = choices_with_gold(rng, s, _corruptions(rng, s))
    return {
        "context": f"$ {s} |",
        "completion": s + END,
        "target": s,
        "max_gen_toks": generation_budget(s + END),
        "choices": choices,
        "gold": gold,
        "string": s,
    }


def make_selective_copy(rng: random.Random, split: str, knobs: dict, count_tokens) -> dict:
    length, m = knobs["length"], knobs["num_tokens"]

    def draw(r: random.Random) -> tuple[tuple[int, ...], tuple[str, ...]]:
        positions = tuple(sorted(r.sample(range(length), m)))
        return positions, tuple(r.choice(LETTERS) for _ in range(m))

    positions, data = draw_in_split(rng, split, draw, key=lambda item: repr(item))
    sequence = [NOISE] * length
    for position, token in zip(positions, data, strict=True):
        sequence[position] = token
    target = " ".join(data)
    distractors = [" ".join(data[::-1]), " ".join(sorted(data)), " ".join(data[1:] + data[:1])]
    choices, gold = choices_with_gold(rng, target, distractors)
    return {
        "context": " ".join(sequence) + " |",
        "completion": target + END,
        "target": target,
        "max_gen_toks": generation_budget(target + END),
        "choices": choices,
        "gold": gold,
        "positions": list(positions),
    }


def make_mamba_selective_copy(rng: random.Random, split: str, knobs: dict, count_tokens) -> dict:
    """Gu & Dao 2023 (after S4's copying data with variable=True): M data tokens at random positions among
    L noise tokens (L + M positions), then M markers; the answer is the data tokens in order."""
    noise, m = knobs["length"], knobs["num_tokens"]

    def draw(r: random.Random) -> tuple[tuple[int, ...], tuple[str, ...]]:
        positions = tuple(sorted(r.sample(range(noise + m), m)))
        return positions, tuple(r.choice(PAPER_DATA) for _ in range(m))

    positions, data = draw_in_split(rng, split, draw, key=lambda item: repr(item))
    sequence = [NOISE] * (noise + m)
    for position, token in zip(positions, data, strict=True):
        sequence[position] = token
    target = " ".join(data)
    return {
        "context": " ".join(sequence + [PAPER_MARKER] * m),
        "completion": target + END,
        "target": target,
        "max_gen_toks": generation_budget(target + END),
        "positions": list(positions),
    }


def make_phonebook(rng: random.Random, split: str, knobs: dict, count_tokens) -> dict:
    n = knobs["num_entries"]

    def draw(r: random.Random) -> tuple[list[tuple[str, str]], int, tuple[int, int]]:
        names = r.sample([f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES], n)
        numbers: dict[str, None] = {}  # insertion-ordered: a set's order changes with PYTHONHASHSEED
        while len(numbers) < n:
            numbers["".join(r.choice(string.digits) for _ in range(10))] = None
        book = list(zip(names, sorted(numbers, key=lambda _: r.random()), strict=True))
        query, *examples = r.sample(range(n), 3)
        return book, query, tuple(examples)

    book, query, examples = draw_in_split(rng, split, draw, key=lambda item: repr(item))
    lines = [f"{name}: {number}" for name, number in book]
    name, number = book[query]
    context = "\n".join(lines + ["", *(lines[e] for e in examples), f"{name}:"])
    choices, gold = choices_with_gold(rng, number, [num for _, num in book])
    return {
        "context": context,
        "completion": number,
        "target": number,
        "max_gen_toks": generation_budget(number),
        "choices": choices,
        "gold": gold,
        "name": name,
        "entry": query,
    }


TASKS = {
    "ssm_copy": TaskSpec(
        "ssm_copy",
        "copying",
        "Copy a random lowercase string: `$ s |` -> `s .`; exact match of the whole copy.",
        "Jelassi et al. 2024, Repeat After Me",
        make_copy,
        {"length": Knob(24, "letters in the string to copy", minimum=2)},
    ),
    "ssm_selective_copy": TaskSpec(
        "ssm_selective_copy",
        "copying",
        "Letters scattered among `_` noise, then `|`: reproduce the letters in order (space separated), "
        "then ` .`.",
        "Gu & Dao 2023, Mamba: selective copying",
        make_selective_copy,
        {
            "length": Knob(48, "positions in the sequence (letters + noise)", minimum=2),
            "num_tokens": Knob(6, "letters to copy", minimum=2),
        },
        constraint=lambda k: (
            None
            if k["num_tokens"] <= k["length"]
            else f"knob 'num_tokens' = {k['num_tokens']} exceeds knob 'length' = {k['length']}: "
            "one letter per position"
        ),
    ),
    "ssm_mamba_selective_copy": TaskSpec(
        "ssm_mamba_selective_copy",
        "copying",
        "The Mamba paper's setting: 16 data tokens (14 letters) among 4096 `_` noise tokens, then 16 `?` "
        "markers: reproduce the data tokens in order (space separated), then ` .`.",
        "Gu & Dao 2023, Mamba: selective copying (length 4096, 16 data tokens, vocabulary 16)",
        make_mamba_selective_copy,
        {
            "length": Knob(4096, "noise tokens (the sequence has length + num_tokens positions)", minimum=0),
            "num_tokens": Knob(16, "data tokens to copy (and markers)", minimum=1),
        },
    ),
    "ssm_phonebook": TaskSpec(
        "ssm_phonebook",
        "copying",
        "N lines `Name: 10-digit number`, two example lookups, then `Name:`; exact match of the number.",
        "Jelassi et al. 2024, Repeat After Me: phone book",
        make_phonebook,
        {"num_entries": Knob(16, "entries in the phone book", minimum=3)},
        constraint=lambda k: (
            None
            if k["num_entries"] <= len(FIRST_NAMES) * len(LAST_NAMES)
            else f"knob 'num_entries' = {k['num_entries']} exceeds the "
            f"{len(FIRST_NAMES) * len(LAST_NAMES)} distinct names"
        ),
    ),
}
