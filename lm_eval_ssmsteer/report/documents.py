"""Per-document scores: what lm-eval's ``--log_samples`` wrote for each document of a task, read back so that
two runs can be compared document by document (``paired``).

lm-eval writes ``samples_<task>_<date>.jsonl`` beside ``results_<date>.json``: one line per document and
filter, with the document's id, hashes of the document, the prompt and the target, and the value of every
metric on that document. A baseline (``regress.write_baseline``) freezes the same, less the text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# lm-eval's three hashes of one document; paired comparisons need all three to agree
HASH_FIELDS = ("doc_hash", "prompt_hash", "target_hash")


@dataclass(frozen=True)
class DocumentScores:
    """One task's per-document scores: "metric,filter" -> document id -> score, and each document's
    (doc, prompt, target) hashes. Metrics whose per-document values are not numbers (lm-eval's corpus
    metrics such as BLEU log pairs of strings) have no entry."""

    source: str
    hashes: dict[int, tuple[str, str, str]]
    values: dict[str, dict[int, float]]

    def to_dict(self) -> dict[str, Any]:
        """As a baseline stores them (JSON object keys are strings)."""
        return {
            "hashes": {str(doc): list(h) for doc, h in sorted(self.hashes.items())},
            "scores": {
                key: {str(doc): value for doc, value in sorted(by_doc.items())}
                for key, by_doc in self.values.items()
            },
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str) -> DocumentScores:
        return cls(
            source=source,
            hashes={int(d): tuple(h) for d, h in doc["hashes"].items()},
            values={
                key: {int(d): float(v) for d, v in by_doc.items()} for key, by_doc in doc["scores"].items()
            },
        )


def samples_beside(results_file: Path, task: str) -> Path | None:
    """The samples file lm-eval wrote for ``task`` beside ``results_<date>.json``, or None."""
    date = results_file.stem.removeprefix("results_")
    found = results_file.with_name(f"samples_{task}_{date}.jsonl")
    return found if found.is_file() else None


def samples_in(folder: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Every sample line under ``folder`` (lm-eval's ``samples_<task>_<date>.jsonl``, searched
    recursively), whole, keyed by (task, document id); the task is the file name less its date part."""
    out = {}
    for path in sorted(folder.rglob("samples_*.jsonl")):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        for line in path.read_text().splitlines():
            if line.strip():
                sample = json.loads(line)
                out[(task, sample["doc_id"])] = sample
    return out


def read_samples(path: Path) -> DocumentScores:
    """The per-document scores of one samples file (read once while it is unchanged); ValueError naming
    the file and line when it is not one lm-eval wrote with document hashes."""
    stat = path.stat()
    return _read_samples(path, stat.st_mtime_ns, stat.st_size)


@cache
def _read_samples(path: Path, mtime_ns: int, size: int) -> DocumentScores:
    hashes: dict[int, tuple[str, str, str]] = {}
    values: dict[str, dict[int, float]] = {}
    not_numbers: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            where = f"{path}: line {number}"
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where} is not JSON ({exc.msg}); was the run cut short?") from None
            missing = [k for k in ("doc_id", "filter", "metrics", *HASH_FIELDS) if k not in sample]
            if missing:
                raise ValueError(
                    f"{where}: no {', '.join(missing)}: not a samples file of lm-eval >= 0.4.3, which hashes "
                    "each document"
                )
            doc_id = int(sample["doc_id"])
            hashes[doc_id] = tuple(sample[k] for k in HASH_FIELDS)
            for metric in sample["metrics"]:
                key = f"{metric},{sample['filter']}"
                value = _number(sample.get(metric))
                if value is None:
                    not_numbers.add(key)
                    continue
                by_doc = values.setdefault(key, {})
                if doc_id in by_doc:
                    raise ValueError(f"{where}: document {doc_id} appears twice for {key}")
                by_doc[doc_id] = value
    for key in not_numbers:
        values.pop(key, None)
    return DocumentScores(str(path), hashes, values)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None
