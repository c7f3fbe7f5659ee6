"""Paired statistics (report/paired.py) against independent computations, and how report and regress use
them on results shaped as lm-eval writes them with --log_samples.

Independent computations: the exact bootstrap distribution of a mean of -1/0/+1 differences (enumerated
from the multinomial of the resample counts, no resampling), the bootstrap written out in numpy (its own
seed, 100,000 resamples) for graded scores and for the stratified average over tasks, the exact McNemar
p-value summed from binomial coefficients, Holm's adjusted p-values of a textbook example, and the normal
approximation for an average over tasks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lm_eval_ssmsteer.report.documents import read_samples
from lm_eval_ssmsteer.report.leaderboard import build_leaderboard
from lm_eval_ssmsteer.report.paired import (
    MCNEMAR,
    SIGN,
    DocumentsDiffer,
    align,
    exact_sign_test,
    holm,
    paired_average,
    paired_difference,
    two_sided_level,
)
from lm_eval_ssmsteer.report.regress import (
    INCONCLUSIVE,
    REGRESSED,
    UNCHANGED,
    WITHIN,
    NotComparable,
    compare,
    write_baseline,
)
from lm_eval_ssmsteer.report.results import ResultsError, load_runs
from lm_eval_ssmsteer.report.writers import PAIRED_CSV, paired_csv, to_html, to_markdown

SPEC = {"version": 1, "interventions": [{"layer": 3, "site": "delta", "channels": "all", "scale": 1.2}]}
DATE = "2026-12-01T00-00-00.000000"


# -- the statistics against independent computations -----------------------------------------------


def exact_bootstrap_quantiles(diffs: np.ndarray, probabilities: tuple[float, ...]) -> list[float]:
    """Quantiles of the mean of n draws with replacement from ``diffs`` (values -1, 0, +1), from the exact
    multinomial distribution of how many -1s and +1s a resample holds."""
    n = len(diffs)
    p_down, p_up = np.mean(diffs == -1), np.mean(diffs == 1)
    p_zero = 1 - p_down - p_up
    atoms: dict[float, float] = {}
    for down in range(n + 1):
        for up in range(n + 1 - down):
            zero = n - down - up
            ways = math.comb(n, down) * math.comb(n - down, up)
            prob = ways * p_down**down * p_up**up * p_zero**zero
            atoms[(up - down) / n] = atoms.get((up - down) / n, 0.0) + prob
    values = sorted(atoms)
    cumulative = np.cumsum([atoms[v] for v in values])
    return [values[int(np.searchsorted(cumulative, q))] for q in probabilities]


@pytest.mark.parametrize(("n", "up", "down"), [(100, 9, 1), (40, 3, 6), (16, 5, 0), (200, 20, 20)])
def test_paired_bootstrap_interval_matches_the_exact_bootstrap_distribution(n, up, down):
    base = np.zeros(n)
    base[:down] = 1  # documents that went down were right in the baseline
    cur = base.copy()
    cur[:down] = 0
    cur[down : down + up] = 1
    found = paired_difference(base, cur)
    assert found.mean == pytest.approx((up - down) / n)
    assert (found.up, found.down, found.n) == (up, down, n)
    low, high = exact_bootstrap_quantiles(cur - base, (0.025, 0.975))
    # percentiles of 10,000 resamples of a distribution on steps of 1/n: within one step of the exact ones
    assert found.low == pytest.approx(low, abs=1 / n + 1e-9)
    assert found.high == pytest.approx(high, abs=1 / n + 1e-9)


def exact_mcnemar(up: int, down: int) -> float:
    """Two-sided exact McNemar: twice the binomial(n, 1/2) tail of the rarer direction, at most 1."""
    n = up + down
    tail = sum(math.comb(n, k) for k in range(min(up, down) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(("up", "down"), [(1, 9), (9, 1), (0, 6), (3, 3), (0, 1), (12, 30), (0, 0)])
def test_exact_test_is_mcnemars_for_0_1_scores(up, down):
    expected = 1.0 if up + down == 0 else exact_mcnemar(up, down)
    assert exact_sign_test(up, down) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_on_0_1_scores_and_the_sign_test_on_others():
    assert exact_sign_test(1, 9) == pytest.approx(0.021484375)  # 2 · 11 / 1024
    binary = paired_difference(np.array([1, 1, 0, 0.0]), np.array([1, 0, 0, 1.0]))
    graded = paired_difference(np.array([0.5, 1, 0, 0.0]), np.array([1, 0.25, 0, 1.0]))
    assert (binary.test, graded.test) == (MCNEMAR, SIGN)
    assert (graded.up, graded.down) == (2, 1)


def test_holm_matches_a_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> kept non-decreasing
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 2 · 0.5 caps at 1, and 0.9 may not fall below it
    assert holm([0.02]) == pytest.approx([0.02])


def test_level_of_z():
    assert two_sided_level(1.96) == pytest.approx(0.05, abs=1e-4)


def test_average_over_tasks_resamples_each_task_on_its_own():
    rng = np.random.default_rng(1)
    tasks = []
    for n, p_base, p_cur in ((300, 0.5, 0.6), (200, 0.7, 0.65)):
        base = (rng.random(n) < p_base).astype(float)
        flip = rng.random(n) < abs(p_cur - p_base) * 2
        cur = np.where(flip, rng.random(n) < p_cur, base).astype(float)
        tasks.append([(base, cur)])
    found = paired_average(tasks)
    diffs = [cur - base for ((base, cur),) in tasks]
    mean = np.mean([d.mean() for d in diffs])
    se = math.sqrt(sum(d.var(ddof=1) / len(d) for d in diffs)) / len(diffs)
    assert found.mean == pytest.approx(mean)
    assert found.low == pytest.approx(mean - 1.96 * se, abs=0.01)
    assert found.high == pytest.approx(mean + 1.96 * se, abs=0.01)
    assert found.p_value is None  # an average has no single test


def numpy_bootstrap(samples: list[np.ndarray], statistic, resamples: int, seed: int) -> tuple[float, float]:
    """The 95% percentile bootstrap written out: each sample resampled with replacement on its own."""
    rng = np.random.default_rng(seed)
    draws = [s[rng.integers(0, len(s), size=(resamples, len(s)))] for s in samples]
    values = statistic(*draws)
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def test_paired_interval_of_graded_scores_matches_a_direct_numpy_resampling():
    rng = np.random.default_rng(7)
    base = rng.random(60)
    cur = np.clip(base + rng.normal(-0.05, 0.2, 60), 0, 1)
    found = paired_difference(base, cur)
    low, high = numpy_bootstrap([cur - base], lambda d: d.mean(axis=-1), 100_000, seed=123)
    # two independent Monte-Carlo estimates of the same quantiles (10,000 and 100,000 resamples): the
    # 10,000's error is about 0.03 standard errors of the mean
    step = np.std(cur - base, ddof=1) / np.sqrt(60)
    assert found.test == SIGN
    assert found.low == pytest.approx(low, abs=0.1 * step)
    assert found.high == pytest.approx(high, abs=0.1 * step)


def test_interval_of_the_average_matches_a_direct_stratified_numpy_resampling():
    rng = np.random.default_rng(3)
    # task 0 has two columns (e.g. two lengths), averaged first; task 1 one column
    columns = [(rng.random(n) < 0.6).astype(float) for n in (30, 25, 50)]
    changed = [np.where(rng.random(len(c)) < 0.2, 1 - c, c) for c in columns]
    found = paired_average([[(columns[0], changed[0]), (columns[1], changed[1])], [(columns[2], changed[2])]])
    diffs = [c - b for b, c in zip(columns, changed, strict=True)]

    def average(a, b, c):
        return ((a.mean(axis=-1) + b.mean(axis=-1)) / 2 + c.mean(axis=-1)) / 2

    low, high = numpy_bootstrap(diffs, average, 100_000, seed=99)
    assert found.mean == pytest.approx(float(average(*diffs)))
    # the interval is about 0.14 wide, on steps of 1/120 or finer
    assert found.low == pytest.approx(low, abs=0.01)
    assert found.high == pytest.approx(high, abs=0.01)


def test_a_single_document_has_no_interval():
    found = paired_difference(np.array([1.0]), np.array([0.0]))
    assert found.low is None and found.mean == -1.0


# -- runs on disk, as lm-eval writes them --------------------------------------------------------


def write_run(
    folder: Path,
    scores: dict[str, list[float]],
    *,
    steer: dict | None = None,
    samples: bool = True,
    salt: str = "",
) -> Path:
    """``results_<date>.json`` and, with ``samples``, one ``samples_<task>_<date>.jsonl`` per task, of
    ref-mamba1 scoring ``scores[task][doc_id]`` (0/1 accuracy) on each document."""
    results, configs, n_samples = {}, {}, {}
    for task, values in scores.items():
        p, n = float(np.mean(values)), len(values)
        results[task] = {"alias": task, "acc,none": p, "acc_stderr,none": math.sqrt(p * (1 - p) / (n - 1))}
        configs[task] = {"task": task, "metadata": {"version": 1.0}}
        n_samples[task] = {"original": n, "effective": n}
        if samples:
            lines = [
                {
                    "doc_id": i,
                    "doc": {"q": i},
                    "target": "0",
                    "filter": "none",
                    "metrics": ["acc"],
                    "doc_hash": f"{task}-doc{i}{salt}",
                    "prompt_hash": f"prompt{i}",
                    "target_hash": "t",
                    "acc": v,
                }
                for i, v in enumerate(values)
            ]
            (folder / f"samples_{task}_{DATE}.jsonl").parent.mkdir(parents=True, exist_ok=True)
            (folder / f"samples_{task}_{DATE}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    data = {
        "results": results,
        "configs": configs,
        "config": {
            "model": "mamba-steered",
            "model_args": {"pretrained": "ref-mamba1", "steering_spec": steer},
        },
        "versions": {t: 1.0 for t in results},
        "n-shot": {t: 0 for t in results},
        "n-samples": n_samples,
        "higher_is_better": {t: {"acc": True} for t in results},
        "model_source": "mamba-steered",
        "date": 1.0,
        "lm_eval_version": "0.4.13",
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"results_{DATE}.json"
    path.write_text(json.dumps(data))
    return path


def flipped(values: list[float], worse: int, better: int = 0) -> list[float]:
    """``values`` with the first ``worse`` right answers made wrong and the first ``better`` wrong ones
    right."""
    out, right, wrong = (
        list(values),
        [i for i, v in enumerate(values) if v],
        [i for i, v in enumerate(values) if not v],
    )
    for i in right[:worse]:
        out[i] = 0.0
    for i in wrong[:better]:
        out[i] = 1.0
    return out


BASE = [float(i % 2) for i in range(100)]  # 50 of 100 right


def test_samples_are_read_per_document_and_non_numbers_left_out(tmp_path):
    path = tmp_path / "samples_x.jsonl"
    line = {"doc_id": 0, "filter": "none", "metrics": ["acc", "bleu"], "acc": True, "bleu": ["ref", "pred"]}
    path.write_text(json.dumps({**line, "doc_hash": "d", "prompt_hash": "p", "target_hash": "t"}) + "\n")
    found = read_samples(path)
    assert found.values == {"acc,none": {0: 1.0}}
    assert found.hashes == {0: ("d", "p", "t")}
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=r"line 1: no doc_hash, prompt_hash, target_hash"):
        read_samples(path)


def test_report_with_a_baseline_pairs_every_run_and_corrects_over_the_sweep(tmp_path):
    base = write_run(tmp_path / "base", {"task_a": BASE, "task_b": BASE})
    for k, worse in enumerate((9, 0, 3)):
        spec = {**SPEC, "interventions": [{**SPEC["interventions"][0], "scale": 1.0 + k}]}
        write_run(tmp_path / f"s{k}", {"task_a": flipped(BASE, worse, 1), "task_b": BASE}, steer=spec)
    board = build_leaderboard(load_runs([tmp_path]), baseline=load_runs([base])[0])
    assert board.baseline.run.steering_spec_sha256 is None
    rows = [row for row in board.rows if row is not board.baseline]
    by_worse = {row.paired[board.columns[0]].down: row for row in rows}
    strong = by_worse[9].paired[board.columns[0]]
    assert strong.p_value == pytest.approx(exact_mcnemar(1, 9))
    p_values = [row.paired[c].p_value for row in rows for c in board.columns]
    assert [row.paired[c].p_holm for row in rows for c in board.columns] == pytest.approx(holm(p_values))
    assert by_worse[0].paired[board.columns[1]].unchanged
    markdown = to_markdown(board)
    assert "## Paired differences vs the baseline ref-mamba1 [mamba-steered] · unsteered" in markdown
    assert f"-0.0800 [{strong.low:+.4f}, {strong.high:+.4f}] p=0.0215 (Holm " in markdown
    page = to_html(board, "my sweep", plots={})
    assert "<title>my sweep</title>" in page and "<h1>my sweep</h1>" in page
    assert "<h2>Paired differences vs the baseline ref-mamba1 [mamba-steered] · unsteered</h2>" in page
    lines = paired_csv(board).splitlines()
    assert len(lines) == 1 + 3 * 3  # 3 runs × (2 tasks + the average)
    assert PAIRED_CSV == "paired.csv"


def test_report_refuses_runs_without_samples_or_of_other_documents(tmp_path):
    base = write_run(tmp_path / "base", {"task_a": BASE})
    write_run(tmp_path / "nosamples", {"task_a": BASE}, steer=SPEC, samples=False)
    with pytest.raises(ResultsError, match=r"task 'task_a' has no samples file beside it .* --log_samples"):
        build_leaderboard(load_runs([tmp_path]), baseline=load_runs([base])[0])
    other = write_run(tmp_path / "other", {"task_a": BASE}, steer=SPEC, salt="-changed")
    runs = load_runs([base, other])
    with pytest.raises(
        DocumentsDiffer, match=r"task 'task_a' \(task version 1.0\): document 0 differs: doc_hash"
    ):
        build_leaderboard(runs, baseline=runs[0])


def test_align_names_documents_only_one_run_scored(tmp_path):
    a = read_samples(write_run(tmp_path / "a", {"t": BASE}).with_name(f"samples_t_{DATE}.jsonl"))
    b = read_samples(write_run(tmp_path / "b", {"t": BASE[:40]}).with_name(f"samples_t_{DATE}.jsonl"))
    with pytest.raises(
        DocumentsDiffer, match=r"100 in .*, 40 in .*only in the first: 40, 41, .* and 52 more"
    ):
        align(a, b, "acc,none", task="t", versions=(1.0, 1.0))
    with pytest.raises(DocumentsDiffer, match=r"task version 1.0 vs 2.0"):
        align(a, a, "acc,none", task="t", versions=(1.0, 2.0))


def test_regress_pairs_when_both_sides_have_samples_and_keeps_the_stderr_rule_otherwise(tmp_path):
    baseline = write_baseline([write_run(tmp_path / "base", {"task_a": BASE})], tmp_path / "baseline.json")
    rerun = write_run(tmp_path / "rerun", {"task_a": BASE})
    drop = write_run(tmp_path / "drop", {"task_a": flipped(BASE, 9, 1)})  # -0.08: 9 down, 1 up
    noisy = write_run(tmp_path / "noisy", {"task_a": flipped(BASE, 6, 5)})  # -0.01: 6 down, 5 up
    few_base = write_baseline([write_run(tmp_path / "few", {"task_a": BASE[:16]})], tmp_path / "few.json")
    few = write_run(tmp_path / "few2", {"task_a": flipped(BASE[:16], 2, 1)})  # -0.06 on 16 documents

    def status(current: Path, against: Path = baseline, **kwargs) -> str:
        (change,) = compare(load_runs([against]), load_runs([current]), **kwargs).changes
        return change.status

    assert status(rerun) == UNCHANGED
    assert status(drop) == REGRESSED
    assert status(drop, paired=False) == INCONCLUSIVE  # the stderr tolerance, 0.14, hides a drop of 0.08
    assert status(noisy) == WITHIN  # its paired interval, about ±0.065, rules out a drop of 0.1 ...
    assert status(noisy, paired=False) == INCONCLUSIVE  # ... which the stderr tolerance could not
    assert status(few, few_base) == INCONCLUSIVE  # 16 documents: the interval still holds a drop of 0.1
    stripped = write_run(tmp_path / "stripped", {"task_a": flipped(BASE, 9, 1)}, samples=False)
    assert status(stripped) == INCONCLUSIVE  # no samples: the stderr rule
    with pytest.raises(NotComparable, match=r"task 'task_a': no samples in the current"):
        status(stripped, paired=True)


def test_bad_paired_inputs_fail_with_one_line_naming_the_option_the_file_and_what_is_needed(tmp_path, capsys):
    from lm_eval_ssmsteer.cli import main

    base = write_run(tmp_path / "base", {"task_a": BASE})
    bare = write_run(tmp_path / "bare", {"task_a": BASE}, samples=False)  # the baseline's run, rerun
    bare_steered = write_run(tmp_path / "bare_steered", {"task_a": BASE}, steer=SPEC, samples=False)
    other = write_run(tmp_path / "other", {"task_a": BASE[:40]}, steer=SPEC)
    baseline = write_baseline([base], tmp_path / "baseline.json")

    def refused(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    err = refused("regress", "--baseline", str(baseline), "--current", str(bare), "--paired")
    assert err.startswith("ssmsteer regress: refusing to compare: --paired: ref-mamba1 [mamba-steered]")
    assert f"task 'task_a': no samples in the current ({bare})" in err and "--log_samples" in err
    err = refused("report", str(bare_steered), "--baseline", str(base), "--out", str(tmp_path / "r1"))
    assert f"ssmsteer report: {bare_steered}: task 'task_a' has no samples file beside it" in err
    err = refused("report", str(other), "--baseline", str(base), "--out", str(tmp_path / "r2"))
    assert "task 'task_a' (task version 1.0): the runs scored different documents: 100 in" in err
    assert "only in the first: 40, 41" in err
