"""Regression checks: current results against a baseline, metric by metric, with a statistical tolerance.

A metric regresses when it moves in its worse direction by more than
``max(floor, z * sqrt(se_baseline**2 + se_current**2))``; where lm-eval reports no stderr only the
floor applies. A worse score within a tolerance wider than the drop the check is asked to detect
(``detect``) is not a pass but *inconclusive*: its n is too small to tell. Results made with different
task definitions (version, config, documents, shots) or on different numbers of documents are not
compared at all unless the caller allows it: a changed task makes any difference meaningless.

Where both runs logged their samples, a metric is decided on the same documents instead (``paired``): it
regresses when the exact two-sided sign test (McNemar's for 0/1 scores) on the documents that changed
rejects "no change" at the level ``z`` stands for (5% for 1.96), the mean moved the worse way, and by more
than the floor. It is unchanged when no document changed, and inconclusive when it got worse without
significance while its 95% paired bootstrap interval still holds a drop of ``detect``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lm_eval_ssmsteer.report.leaderboard import task_differences
from lm_eval_ssmsteer.report.paired import (
    DocumentsDiffer,
    PairedDifference,
    align,
    check_same_documents,
    paired_difference,
    two_sided_level,
)
from lm_eval_ssmsteer.report.results import (
    BASELINE_FORMAT,
    MetricKey,
    Run,
    Score,
    TaskResult,
    format_limit,
    load_runs,
    merge_runs,
    run_to_baseline,
)

DEFAULT_Z = 1.96
DEFAULT_FLOOR = 0.01
DEFAULT_DETECT = 0.1

REGRESSED, IMPROVED, WITHIN, INCONCLUSIVE, UNCHANGED, MISSING = (
    "REGRESSED",
    "improved",
    "within tolerance",
    "inconclusive",
    "unchanged",
    "MISSING",
)


class NotComparable(Exception):
    """Baseline and current results cannot be compared; the message lists every reason."""


@dataclass(frozen=True)
class MetricChange:
    run_label: str
    task: str
    key: MetricKey
    baseline: Score
    current: Score | None
    tolerance: float | None  # the stderr rule's; None where the change was decided on paired documents
    status: str
    paired: PairedDifference | None = None

    @property
    def delta(self) -> float | None:
        return None if self.current is None else self.current.value - self.baseline.value

    @property
    def documents(self) -> str:
        """n of the baseline, and of the current score where it differs: "16", "16 → 4"."""
        base = "?" if self.baseline.n is None else str(self.baseline.n)
        if self.current is None or self.current.n == self.baseline.n:
            return base
        return f"{base} → {'?' if self.current.n is None else self.current.n}"

    @property
    def test_text(self) -> str:
        """How a paired change was decided: ``McNemar p=0.0215, 1↑ 9↓, 95% CI [-0.1400, -0.0300]``."""
        d = self.paired
        if d is None:
            return "—"
        interval = "[?]" if d.low is None else f"[{d.low:+.4f}, {d.high:+.4f}]"
        return f"{d.test} p={d.p_value:.4f}, {d.up}↑ {d.down}↓, 95% CI {interval}"

    @property
    def status_text(self) -> str:
        if self.status == INCONCLUSIVE:
            known = [s.n for s in (self.baseline, self.current) if s is not None and s.n is not None]
            return f"{INCONCLUSIVE}: n={min(known) if known else '?'}"
        return self.status


@dataclass
class Comparison:
    changes: list[MetricChange]
    warnings: list[str]
    detect: float = DEFAULT_DETECT  # the drop the check had to be able to detect

    @property
    def failed(self) -> list[MetricChange]:
        return [c for c in self.changes if c.status in (REGRESSED, MISSING)]

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.changes)

    @property
    def paired(self) -> int:
        return sum(c.paired is not None for c in self.changes)


def tolerance(baseline: Score, current: Score, z: float, floor: float) -> float:
    spread = math.hypot(baseline.stderr or 0.0, current.stderr or 0.0)
    return max(floor, z * spread)


def compare(
    baseline: Iterable[Run],
    current: Iterable[Run],
    *,
    z: float = DEFAULT_Z,
    floor: float = DEFAULT_FLOOR,
    detect: float = DEFAULT_DETECT,
    allow_config_mismatch: bool = False,
    paired: bool | None = None,
) -> Comparison:
    """Every metric of every baseline run against the current run of the same backend, model and spec.

    ``detect`` is the drop the check must be able to detect (metric units): a worse score within a
    wider tolerance is INCONCLUSIVE. Raises NotComparable when the two share no run, or when a task's
    definition or document count differs (unless ``allow_config_mismatch``, which turns those into
    warnings).

    ``paired``: None decides on the same documents where both sides logged samples, and by stderr
    elsewhere; True requires samples on both sides (NotComparable naming what lacks them, before anything
    is compared); False uses the stderr rule throughout.
    """
    base_runs, _ = merge_runs(list(baseline))
    current_runs, _ = merge_runs(list(current))
    pairs = pair_runs(base_runs, current_runs)
    if not any(pairs.values()):
        raise NotComparable(
            "no run in the current results matches one in the baseline (same backend and model, and the "
            f"same steering spec or spec file).\n  baseline: {_describe(base_runs)}\n"
            f"  current:  {_describe(current_runs)}"
        )
    if paired:
        _require_samples(base_runs, pairs)
    rule = Rule(z, floor, detect)
    mismatches: list[str] = []
    warnings: list[str] = []
    changes: list[MetricChange] = []
    for base in base_runs:
        label = _label(base)
        cur = pairs[base.key]
        if cur is not None and cur.key != base.key:
            warnings.append(f"{label}: the steering spec changed, now {cur.spec_label}")
        for task_name, base_task in sorted(base.tasks.items()):
            cur_task = cur.tasks.get(task_name) if cur else None
            if cur_task is None:
                changes.extend(
                    MetricChange(label, task_name, key, score, None, None, MISSING)
                    for key, score in base_task.scores.items()
                )
                continue
            for what, a, b in task_differences(base_task, cur_task):
                mismatches.append(f"{label}, task '{task_name}': {what} {a} in the baseline, {b} now")
            if base_task.n_samples != cur_task.n_samples:
                mismatches.append(
                    f"{label}, task '{task_name}': {_documents(base_task)} in the baseline, "
                    f"{_documents(cur_task)} now"
                )
            if base.lm_eval_version != cur.lm_eval_version:
                warnings.append(
                    f"{label}: baseline made with lm-eval {base.lm_eval_version}, current with "
                    f"{cur.lm_eval_version}; scores can shift between lm-eval versions"
                )
            documents = None
            if paired is not False:
                documents = _paired_documents(label, task_name, base_task, cur_task, mismatches)
            for key, score in base_task.scores.items():
                aligned = None
                if documents is not None:
                    versions = (base_task.version, cur_task.version)
                    aligned = align(*documents, str(key), task=task_name, versions=versions)
                higher_is_better = base_task.is_higher_better(key)
                current_score = cur_task.scores.get(key)
                changes.append(
                    _change(label, task_name, key, score, current_score, higher_is_better, rule, aligned)
                )
    if mismatches and not allow_config_mismatch:
        raise NotComparable(
            "the results were made with different task definitions, so their scores are not comparable:\n  "
            + "\n  ".join(mismatches)
            + "\nRe-make the baseline with the current tasks, or pass --allow-config-mismatch to compare."
        )
    warnings = list(dict.fromkeys(warnings + [f"compared despite: {m}" for m in mismatches]))
    return Comparison(changes, warnings, detect)


def _require_samples(base_runs: list[Run], pairs: dict[tuple, Run | None]) -> None:
    """Paired mode asked for: every task compared must have per-document scores on both sides."""
    lacking = []
    for base in base_runs:
        cur = pairs[base.key]
        for name, base_task in sorted(base.tasks.items()):
            cur_task = cur.tasks.get(name) if cur else None
            for side, task in (("baseline", base_task), ("current", cur_task)):
                if task is not None and task.documents() is None:
                    lacking.append(f"{_label(base)}, task '{name}': no samples in the {side} ({task.source})")
    if lacking:
        more = f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else ""
        raise NotComparable(
            f"--paired: {lacking[0]}{more}; paired mode needs per-document scores on both sides, from runs "
            "made with --log_samples (a baseline keeps them when written from such runs); without --paired "
            "such results are compared by the stderr rule"
        )


def _paired_documents(label: str, task: str, base: TaskResult, cur: TaskResult, mismatches: list[str]):
    """Both sides' per-document scores when both have them and they are of the same documents; else None
    (a difference of documents is recorded in ``mismatches``)."""
    documents = base.documents(), cur.documents()
    if None in documents:
        return None
    try:
        check_same_documents(*documents, task=task, versions=(base.version, cur.version))
    except DocumentsDiffer as exc:
        mismatches.append(f"{label}, {exc}")
        return None
    return documents


def pair_runs(baseline: list[Run], current: list[Run]) -> dict[tuple, Run | None]:
    """The current run to hold each baseline run against: the same backend, model and spec hash; else,
    for a steered run whose spec was edited, the steered run of that backend and model named by the same
    spec file or preset, or the only one left on both sides."""
    by_key = {run.key: run for run in current}
    pairs: dict[tuple, Run | None] = {run.key: by_key.get(run.key) for run in baseline}

    def edited(runs: list[Run], group: tuple[str, str], paired: set) -> list[Run]:
        return [
            r
            for r in runs
            if r.steering_spec_sha256 and (r.backend, r.model_label) == group and r.key not in paired
        ]

    for base in baseline:
        if pairs[base.key] is not None or base.steering_spec_sha256 is None:
            continue
        group = (base.backend, base.model_label)
        left_base = edited(baseline, group, {k for k, v in pairs.items() if v is not None})
        left_current = edited(current, group, {v.key for v in pairs.values() if v is not None})
        named = [r for r in left_current if base.spec_ref and r.spec_ref == base.spec_ref]
        if named:
            pairs[base.key] = named[0]
        elif len(left_base) == 1 and len(left_current) == 1:
            pairs[base.key] = left_current[0]
    return pairs


@dataclass(frozen=True)
class Rule:
    """When a change counts: ``z`` (the stderr multiplier, and the level of the paired test), ``floor``
    (the least change that counts, in metric units), ``detect`` (the drop the check must be able to see)."""

    z: float
    floor: float
    detect: float


def _change(
    label: str,
    task: str,
    key: MetricKey,
    base: Score,
    cur: Score | None,
    higher_is_better: bool,
    rule: Rule,
    aligned: tuple | None = None,
) -> MetricChange:
    """By the paired rule where ``aligned`` holds both runs' per-document scores, else by stderr."""
    if cur is None:
        return MetricChange(label, task, key, base, None, None, MISSING)
    if aligned is not None:
        return _paired_change(label, task, key, base, cur, higher_is_better, rule, aligned)
    tol = tolerance(base, cur, rule.z, rule.floor)
    gain = (cur.value - base.value) * (1 if higher_is_better else -1)
    if gain == 0:
        status = UNCHANGED
    elif gain < -tol:
        status = REGRESSED
    elif gain > tol:
        status = IMPROVED
    elif gain < 0 and tol > max(rule.detect, rule.floor):
        status = INCONCLUSIVE  # a drop of `detect` would have passed too: n is too small to tell
    else:
        status = WITHIN
    return MetricChange(label, task, key, base, cur, tol, status)


def _paired_change(
    label: str,
    task: str,
    key: MetricKey,
    base: Score,
    cur: Score,
    higher_is_better: bool,
    rule: Rule,
    aligned: tuple,
) -> MetricChange:
    """Decided on the same documents: the exact test at the level ``z`` stands for, the floor on the mean,
    and the paired interval for whether a drop of ``detect`` could have hidden in the noise."""
    d = paired_difference(*aligned)
    sign = 1 if higher_is_better else -1
    gain = d.mean * sign
    significant = d.p_value < two_sided_level(rule.z) and abs(d.mean) > rule.floor
    if d.unchanged:
        status = UNCHANGED
    elif gain < 0 and significant:
        status = REGRESSED
    elif gain > 0 and significant:
        status = IMPROVED
    elif gain < 0 and (d.low is None or min(d.low * sign, d.high * sign) < -max(rule.detect, rule.floor)):
        status = INCONCLUSIVE  # a drop of `detect` is still inside the interval: n is too small to tell
    else:
        status = WITHIN
    return MetricChange(label, task, key, base, cur, None, status, d)


def _label(run: Run) -> str:
    return f"{run.model_label} [{run.backend}] {run.spec_label}"


def _documents(task: TaskResult) -> str:
    n = "an unknown number of documents" if task.n_samples is None else f"n={task.n_samples} documents"
    return n if task.limit is None else f"{n} ({format_limit(task.limit)})"


def _describe(runs: Iterable[Run]) -> str:
    return "; ".join(_label(run) for run in runs) or "(none)"


def format_comparison(comparison: Comparison, show_all: bool = False) -> str:
    """A Markdown table of what changed (every metric with ``show_all``), then a one-line summary."""
    shown = [c for c in comparison.changes if show_all or c.status != UNCHANGED]
    header = ["run", "task", "metric", "n", "baseline", "current", "Δ", "tolerance", "paired test", "status"]
    lines = []
    if shown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for c in shown:
            cells = [
                c.run_label,
                c.task,
                str(c.key),
                c.documents,
                _fmt(c.baseline),
                _fmt(c.current),
                "—" if c.delta is None else f"{c.delta:+.4f}",
                "—" if c.tolerance is None else f"{c.tolerance:.4f}",
                c.test_text,
                c.status_text,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    counts = ", ".join(
        f"{comparison.count(s)} {s.lower()}"
        for s in (REGRESSED, MISSING, INCONCLUSIVE, IMPROVED, WITHIN, UNCHANGED)
    )
    how = f" ({comparison.paired} on the same documents, paired)" if comparison.paired else ""
    lines.append(f"{len(comparison.changes)} metrics compared{how}: {counts}.")
    if comparison.count(INCONCLUSIVE):
        lines.append(inconclusive_note(comparison))
    lines.extend(f"warning: {w}" for w in comparison.warnings)
    return "\n".join(lines)


def inconclusive_note(comparison: Comparison) -> str:
    return (
        f"inconclusive: {comparison.count(INCONCLUSIVE)} metric(s) got worse within a tolerance wider "
        f"than {comparison.detect:g}, the drop this check must detect (--detect), or, paired, with a 95% "
        "interval that still holds such a drop: too few documents to tell a regression from noise. Not a "
        "pass; evaluate more documents to decide."
    )


def _fmt(score: Score | None) -> str:
    if score is None:
        return "—"
    return f"{score.value:.4f}" + ("" if score.stderr is None else f" ± {score.stderr:.4f}")


def write_baseline(results_paths: Iterable[str | Path], out_file: str | Path) -> Path:
    """Freeze lm-eval results (files or folders) as a baseline for ``ssmsteer regress --baseline``.

    The baseline keeps, per run, what a comparison needs: backend, model, spec and its hash, and per
    task its version, shots, document count, normalised config and scores with stderr. When a folder
    holds reruns, the newest result of each task is kept.
    """
    runs, _ = merge_runs(load_runs(results_paths))
    runs.sort(key=lambda r: (r.model, r.backend, r.steering_spec_sha256 or ""))
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"format": BASELINE_FORMAT, "runs": [run_to_baseline(run) for run in runs]}
    out.write_text(
        json.dumps(document, indent=1, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return out
