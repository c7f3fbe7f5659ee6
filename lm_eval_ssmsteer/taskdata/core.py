"""Shared machinery of the task generators: knobs, seeded split streams, split assignment, length fitting.

Splits are disjoint by construction, not by luck: every item has a *key* (the content that makes it the
item it is: the string to copy, the needle, the phone book...) and the SHA-256 of that key decides which
split the item may belong to (80% train, 10% calibration, 10% test). A generator draws candidates from a
stream seeded by (task, split, seed) and keeps only those whose key hashes into the requested split, so
the same item can never appear in two splits, whatever the seeds and sizes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "calibration", "test")
_BUCKETS = {"train": range(0, 8), "calibration": range(8, 9), "test": range(9, 10)}
_MAX_TRIES = 100_000

TokenCounter = Callable[[str], int]


class TaskDataError(ValueError):
    """A knob, split or count a task cannot honour: the message names key, value and what is allowed."""


class LengthTooShort(TaskDataError):
    """A long-context length below what one document needs; `minimum` is that document's least length."""

    def __init__(self, message: str, minimum: int):
        super().__init__(message)
        self.minimum = minimum


# Generation budget: a right answer of n characters is at most n tokens in any tokenizer of these ASCII
# texts (a byte-level BPE token covers at least one byte), plus room for a leading newline or a stray word.
ANSWER_MARGIN = 8


def generation_budget(completion: str) -> int:
    """Tokens to generate for `completion` (what follows the context after one space): its characters
    (an upper bound of its tokens) plus ANSWER_MARGIN. Depends on the answer only, never on the tokenizer."""
    return len(" " + completion) + ANSWER_MARGIN


def char_count(text: str) -> int:
    """Token count in the project tokenizer (one token per character)."""
    return len(text)


def split_of(key: str) -> str:
    """The only split an item with this key may belong to."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 10
    return next(name for name, buckets in _BUCKETS.items() if bucket in buckets)


def split_rng(task: str, split: str, seed: int) -> random.Random:
    """The seeded stream of one (task, split, seed); string seeds hash with SHA-512, stable across runs."""
    return random.Random(f"ssmsteer/{task}/{split}/{seed}")


def draw_in_split(
    rng: random.Random, split: str, draw: Callable[[random.Random], Any], key: Callable[[Any], str]
) -> Any:
    """Draw candidates until one's key hashes into `split`."""
    for _ in range(_MAX_TRIES):
        item = draw(rng)
        if split_of(key(item)) == split:
            return item
    raise TaskDataError(
        f"no item of split {split!r} found in {_MAX_TRIES} draws: the knobs leave too few items"
    )


@dataclass(frozen=True)
class Knob:
    """One difficulty or size setting of a task, with its default and the smallest value allowed."""

    default: int | float
    help: str
    minimum: int | float = 0
    kind: type = int
    maximum: int | float | None = None  # where a larger value cannot make a valid document

    def check(self, task: str, name: str, value: Any) -> int | float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (self.kind is int and not float(value).is_integer())
        ):
            raise TaskDataError(
                f"{task}: knob {name!r} = {value!r} must be "
                f"{'an integer' if self.kind is int else 'a number'} "
                f">= {self.minimum} ({self.help})"
            )
        if value < self.minimum:
            raise TaskDataError(
                f"{task}: knob {name!r} = {value!r} is below the minimum {self.minimum} ({self.help})"
            )
        if self.maximum is not None and value > self.maximum:
            raise TaskDataError(
                f"{task}: knob {name!r} = {value!r} is above the maximum {self.maximum}: allowed "
                f"{self.minimum}..{self.maximum} ({self.help})"
            )
        return self.kind(value)


@dataclass(frozen=True)
class TaskSpec:
    """A task family member: how one document is made from a seeded stream, and which knobs it takes."""

    name: str
    family: str
    summary: str
    anchor: str
    make: Callable[..., dict]
    knobs: dict[str, Knob] = field(default_factory=dict)
    long_context: bool = False
    # cross-knob rule: returns the message of a violated rule (naming the knobs), or None
    constraint: Callable[[dict[str, Any]], str | None] | None = None

    def resolve_knobs(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.knobs))
        if unknown:
            raise TaskDataError(
                f"{self.name}: unknown knob {unknown[0]!r} = {given[unknown[0]]!r}; "
                f"allowed knobs: {', '.join(sorted(self.knobs)) or 'none'}"
            )
        knobs = {
            name: knob.check(self.name, name, given.get(name, knob.default))
            for name, knob in self.knobs.items()
        }
        problem = self.constraint(knobs) if self.constraint else None
        if problem:
            raise TaskDataError(f"{self.name}: {problem}")
        return knobs


def choices_with_gold(
    rng: random.Random, gold: str, distractors: Sequence[str], k: int = 4
) -> tuple[list[str], int]:
    """`k` distinct choices (fewer if there are not enough distractors): the gold one at a random place.

    No distractor is a prefix of the gold (its log-likelihood would be at least the gold's, so the gold could
    not win) or extends it (it would lose to the gold for free)."""
    pool = sorted({d for d in distractors if not gold.startswith(d) and not d.startswith(gold)})
    picked = rng.sample(pool, min(k - 1, len(pool)))
    position = rng.randrange(len(picked) + 1)
    return picked[:position] + [gold] + picked[position:], position


def largest_fitting(fits: Callable[[int], bool], guess: int, low: int) -> int:
    """The largest n >= `low` with fits(n), for a `fits` that holds up to some n and fails beyond, given
    fits(low) and a `guess` near the answer: a galloping search that measures few texts when the guess is
    good (a token count of a long text is the expensive step)."""
    n = max(guess, low)
    if fits(n):
        step = 1
        while fits(n + step):
            n, step = n + step, 2 * step
        high = n + step  # fits(n), not fits(high)
    else:
        high, step = n, 1
        while n - step > low and not fits(n - step):
            high, step = n - step, 2 * step
        n = max(low, n - step)
    while high - n > 1:
        mid = (n + high) // 2
        n, high = (mid, high) if fits(mid) else (n, mid)
    return n
