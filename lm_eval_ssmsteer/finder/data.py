"""Calibration data for the finder: (context, answer) pairs tokenized by the model's own tokenizer and
scored with the loss on the answer tokens only (as lm-eval scores `context + " " + answer`).

Default source: the CALIBRATION split (disjoint from every test split) of the four multi-needle
long-context tasks at 2048 tokens, beyond the 768-character prompts the reference models were trained on:
where ref-mamba1 still has headroom (docs/finder.md). A JSONL file may be given instead, one object a line
with "context" and "answer" (or "target").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_TASKS = (
    "ssm_niah_multikey",
    "ssm_niah_multivalue",
    "ssm_niah_multiquery",
    "ssm_variable_tracking",
)
DEFAULT_DOCS_PER_TASK = 2
VALIDATION_SEED = 1  # validation documents: the calibration split drawn again with another seed
DEFAULT_LENGTH = 2048  # prompt length (tokens) of the long-context tasks; other tasks ignore it
MIN_DOCS = 8  # fewer documents give scores and a scale that are noise
TOKENS_PER_BATCH = 8192


class FinderError(ValueError):
    """Bad input to the finder; the message names the field, the value and what is allowed."""


def docs_per_task(tasks: int, asked: int | None = None, flag: str = "--docs-per-task") -> int:
    """Calibration documents a task for ``tasks`` tasks: ``asked``, or by default DEFAULT_DOCS_PER_TASK,
    more where fewer tasks would give under MIN_DOCS documents (3 tasks: 3 each; 1 task: 8). An ``asked``
    count that gives under MIN_DOCS stops here, before any model loads, saying the count that would do."""
    enough = -(-MIN_DOCS // max(tasks, 1))
    if asked is None:
        return max(DEFAULT_DOCS_PER_TASK, enough)
    if asked * tasks < MIN_DOCS:
        raise FinderError(
            f"{flag} {asked} with {tasks} task(s) gives {asked * tasks} documents; at least "
            f"{MIN_DOCS} are needed: {flag} {enough} or more"
        )
    return asked


@dataclass(frozen=True)
class CalibrationData:
    """Token ids per document and the index of its first answer token; ``sha256`` names the content."""

    examples: tuple[tuple[tuple[int, ...], int], ...]
    source: str
    sha256: str

    @classmethod
    def from_ids(cls, examples: list[tuple[list[int], int]], source: str) -> CalibrationData:
        checked = []
        for i, (ids, start) in enumerate(examples):
            if not 0 < start < len(ids):
                raise FinderError(
                    f"calibration data ({source}): document {i} has no answer tokens (answer starts at "
                    f"{start}, document has {len(ids)} tokens); every document needs context and answer"
                )
            checked.append((tuple(int(t) for t in ids), int(start)))
        if len(checked) < MIN_DOCS:
            raise FinderError(
                f"calibration data ({source}): {len(checked)} documents; at least {MIN_DOCS} are needed"
            )
        digest = hashlib.sha256(json.dumps(checked, separators=(",", ":")).encode()).hexdigest()
        return cls(tuple(checked), source, digest)

    @property
    def n_answer_tokens(self) -> int:
        return sum(len(ids) - start for ids, start in self.examples)

    def batches(self, tokens_per_batch: int = TOKENS_PER_BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(ids, labels) batches of similar lengths, right-padded; labels are -100 outside the answers."""
        order = sorted(range(len(self.examples)), key=lambda i: len(self.examples[i][0]))
        groups: list[list[int]] = [[]]
        for i in order:
            width = len(self.examples[i][0])  # the longest so far: order is ascending
            if groups[-1] and width * (len(groups[-1]) + 1) > tokens_per_batch:
                groups.append([])
            groups[-1].append(i)
        out = []
        for group in groups:
            width = max(len(self.examples[i][0]) for i in group)
            ids = torch.zeros((len(group), width), dtype=torch.long)
            labels = torch.full((len(group), width), -100, dtype=torch.long)
            for row, i in enumerate(group):
                seq, start = self.examples[i]
                ids[row, : len(seq)] = torch.tensor(seq)
                labels[row, start : len(seq)] = torch.tensor(seq[start:])
            out.append((ids, labels))
        return out


def encode_pairs(tokenizer: Any, pairs: list[tuple[str, str]], source: str) -> CalibrationData:
    """Context and `" " + answer` tokenized separately and joined, as lm-eval does for loglikelihood."""
    examples = []
    for context, answer in pairs:
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        cont = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        examples.append((list(ctx) + list(cont), len(ctx)))
    return CalibrationData.from_ids(examples, source)


def token_counter(tokenizer: Any):
    """Counts tokens as ``tokenizer`` encodes a text (the long-context tasks' lengths are in these)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def task_pairs(
    tasks: list[str],
    split: str,
    docs_per_task: int,
    seed: int = 0,
    length: int = DEFAULT_LENGTH,
    count_tokens: Any = None,
) -> list[tuple[str, str]]:
    """``docs_per_task`` documents of each task; the long-context ones ``length`` tokens long (counted by
    ``count_tokens``, default: the project tokenizer's one token per character)."""
    from lm_eval_ssmsteer.taskdata import TASKS, answer_text, generate

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise FinderError(f"--tasks: unknown task(s) {unknown}; allowed: {', '.join(TASKS)}")
    if not tasks:
        raise FinderError(f"--tasks: no task given; allowed: {', '.join(TASKS)}")
    return [
        (d["context"], answer_text(d))
        for task in tasks
        for d in generate(
            task,
            split,
            docs_per_task,
            seed=seed,
            count_tokens=count_tokens,
            **({"length": length} if TASKS[task].long_context else {}),
        )
    ]


def without(pairs: list[tuple[str, str]], seen: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``pairs`` less any document also in ``seen`` (validation documents must be new ones)."""
    known = set(seen)
    return [p for p in pairs if p not in known]


def validation_pairs(
    tasks: list[str],
    calibration: list[tuple[str, str]],
    docs_per_task: int,
    length: int = DEFAULT_LENGTH,
    count_tokens: Any = None,
) -> list[tuple[str, str]]:
    """``find``'s default validation documents: the calibration split drawn again with VALIDATION_SEED,
    less any document already in ``calibration``."""
    drawn = task_pairs(
        tasks, "calibration", docs_per_task, seed=VALIDATION_SEED, length=length, count_tokens=count_tokens
    )
    return without(drawn, calibration)


def file_pairs(path: Path) -> list[tuple[str, str]]:
    """(context, answer) pairs from a JSONL file; errors name the line."""
    if not path.is_file():
        raise FinderError(f"--data: {str(path)!r} is not a file; expected JSONL with context and answer")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FinderError(f"--data {path}: line {n} is not JSON ({exc})") from None
        answer = doc.get("answer", doc.get("target")) if isinstance(doc, dict) else None
        if isinstance(answer, list):
            answer = ", ".join(map(str, answer))
        if not isinstance(doc, dict) or not isinstance(doc.get("context"), str) or not answer:
            raise FinderError(
                f'--data {path}: line {n} must be an object with a string "context" and a non-empty '
                f'"answer" (or "target"); got {line[:80]!r}'
            )
        pairs.append((doc["context"], str(answer)))
    return pairs
