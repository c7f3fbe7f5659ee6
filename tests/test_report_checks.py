"""What a person looking at a report must be able to trust, checked without a browser or an lm-eval run.

The inputs are results files shaped as lm-eval writes them, for the suite's shape (12 tasks with one
score, 9 scored per length at 512/1024/2048: 39 task columns), with a chosen number of documents and
``--limit``. The checks: every score shows its n; rows of different n are compared only with a warning;
the plots' intervals stay within [0, 1]; no text of a figure overlaps another; a missing gain is drawn
as missing, not as 0; and ``regress`` calls a drop it cannot resolve inconclusive, not a pass.
"""

from __future__ import annotations

import csv
import io
import json
import re
from itertools import combinations
from pathlib import Path

import pytest
from test_report import run_cli

from lm_eval_ssmsteer.report.intervals import NEWCOMBE, WILSON, difference, interval, is_proportion, wilson
from lm_eval_ssmsteer.report.leaderboard import build_leaderboard
from lm_eval_ssmsteer.report.results import Score, load_runs
from lm_eval_ssmsteer.report.writers import (
    gains_table,
    leaderboard_table,
    scores_csv,
    scores_table,
    to_csv,
    to_html,
)

PLAIN_TASKS = [f"ssm_task{i:02d}" for i in range(12)]
LENGTH_TASKS = [f"ssm_long{i}" for i in range(9)]
LENGTHS = (512, 1024, 2048)
SPEC = {"version": 1, "interventions": [{"layer": 3, "site": "delta", "channels": "all", "scale": 1.2}]}


def results_file(
    folder: Path,
    *,
    n: int,
    limit: int | None = None,
    steer: dict | None = None,
    drop: tuple[str, ...] = (),
    shift: float = 0.0,
    date: float = 1.0,
) -> Path:
    """An lm-eval results file of ref-mamba1 on the suite's shape; ``n`` documents (per length) a task."""
    results, configs, n_samples, hib = {}, {}, {}, {}
    for i, task in enumerate(PLAIN_TASKS):
        p = min(1.0, max(0.0, round((i % 5) / 4 * n) / n + shift))
        results[task] = {"alias": task, "acc,none": p, "acc_stderr,none": (p * (1 - p) / (n - 1)) ** 0.5}
        hib[task] = {"acc": True}
    for i, task in enumerate(LENGTH_TASKS):
        results[task] = {"alias": task}
        for j, length in enumerate(LENGTHS):
            results[task][f"{length},none"] = min(1.0, max(0.0, 1.0 - ((i + j) % 4) / 4 + shift))
            results[task][f"{length}_stderr,none"] = "N/A"
        hib[task] = {str(length): True for length in LENGTHS}
    for task in drop:
        del results[task]
    for task in results:
        configs[task] = {"task": task, "metadata": {"version": 1.0}}
        original = 100 if task in PLAIN_TASKS else 50 * len(LENGTHS)
        n_samples[task] = {"original": original, "effective": n}
    model_args = {"pretrained": "ref-mamba1", **({"steering_spec": steer} if steer else {})}
    data = {
        "results": results,
        "configs": configs,
        "config": {"model": "mamba-steered", "model_args": model_args, "limit": limit},
        "versions": {t: 1.0 for t in results},
        "n-shot": {t: 0 for t in results},
        "n-samples": n_samples,
        "higher_is_better": hib,
        "model_source": "mamba-steered",
        "date": date,
        "lm_eval_version": "0.4.13",
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results_2026-12-01T00-00-00.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def mixed(tmp_path) -> list[Path]:
    """Unsteered on 16 documents a task, steered with --limit 4 and missing two tasks."""
    return [
        results_file(tmp_path / "full", n=16),
        results_file(
            tmp_path / "quick", n=4, limit=4, steer=SPEC, drop=("ssm_task03", "ssm_long2"), shift=-0.25
        ),
    ]


# -- intervals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 100])
def test_wilson_interval_stays_in_0_1_contains_the_score_and_is_never_empty(n):
    for k in range(n + 1):
        low, high = wilson(k / n, n)
        assert 0.0 <= low <= k / n <= high <= 1.0
        assert high - low > 0.0, "0/n and n/n keep an interval: the stderr there is 0, the doubt is not"


def test_wilson_interval_matches_the_textbook_values():
    assert wilson(1.0, 8) == pytest.approx((0.6756, 1.0), abs=1e-4)  # 8 of 8
    assert wilson(0.5, 4) == pytest.approx((0.1500, 0.8500), abs=1e-4)  # 2 of 4


def test_proportions_get_wilson_other_scores_get_their_stderr():
    assert interval(Score(0.5, 0.2887, 4))[2] == WILSON
    assert interval(Score(1.0, None, 8))[2] == WILSON  # RULER's per-length scores report no stderr
    assert not is_proportion(Score(12.3, 0.5, 100))  # a perplexity
    assert not is_proportion(Score(0.5, 0.4, 16))  # wider than any mean of scores in [0, 1]
    assert interval(Score(0.5, None, None)) is None  # neither n nor stderr: no interval, not a zero one


def test_a_gain_between_equal_proportions_on_few_documents_is_not_zero_plus_minus_zero():
    low, high, how = difference(Score(1.0, 0.0, 4), Score(1.0, 0.0, 4))  # 4 of 4 against 4 of 4
    assert how == NEWCOMBE and -1.0 <= low < 0.0 < high <= 1.0
    low, high, _ = difference(Score(1.0, 0.0, 400), Score(1.0, 0.0, 400))
    assert -0.02 < low < 0.0 < high < 0.02  # more documents, narrower
    low, high, _ = difference(Score(1.0, 0.0, 16), Score(0.0, 0.0, 16))  # all against none: a real gain
    assert 0.0 < low < high <= 1.0


# -- n in every cell, warnings where n differs ----------------------------------------------------------


def test_every_score_cell_shows_its_n_in_markdown_html_and_csv(mixed, tmp_path, capsys):
    out = tmp_path / "report"
    assert run_cli(capsys, "report", *mixed, "--out", out)[0] == 0
    board = build_leaderboard(load_runs(mixed))
    _, rows = scores_table(board)
    assert len(rows) == len(PLAIN_TASKS) + len(LENGTH_TASKS) * len(LENGTHS) == 39
    for cells in rows:
        for cell in cells[1:]:
            assert cell.text == "—" or re.fullmatch(r"n=(16|4 of \d+)", cell.note), cell
    markdown = (out / "leaderboard.md").read_text()
    score_lines = [line for line in markdown.splitlines() if re.match(r"\| ssm_(task|long)", line)]
    for line in score_lines:
        for cell in line.strip("|").split("|")[1:]:
            assert cell.strip() in ("—", "") or "(n=" in cell, line
    page = (out / "report.html").read_text()
    scores_html = page[page.index('id="scores"') : page.index("</table>", page.index('id="scores"'))]
    for td in re.findall(r"<td[^>]*>(.*?)</td>", scores_html):
        if td.startswith("ssm_"):
            continue  # the task's name
        assert td == "—" or re.search(r'<span class="n">n=\d+', td), td
    wide = list(csv.DictReader(io.StringIO(to_csv(board))))
    assert {r["ssm_task00 (acc) n"] for r in wide} == {"16", "4"}
    assert {r["limit"] for r in wide} == {"", "--limit 4"}
    long = list(csv.DictReader(io.StringIO(scores_csv(board))))
    assert {(r["n"], r["n_original"], r["limit"]) for r in long} >= {("16", "100", ""), ("4", "100", "4.0")}
    for cells in gains_table(board)[1][:-1]:  # the last row is the average: no n of its own
        for cell in cells[1:]:
            assert (cell.text, cell.note) == ("—", "") or re.fullmatch(r"n=4 vs 16", cell.note), cell
    summary = leaderboard_table(board)[1]
    assert {cells[4].text for cells in summary} == {"n=16", "n=4"}


def test_rows_of_different_n_are_compared_with_a_warning_in_the_report_and_on_stderr(mixed, tmp_path, capsys):
    code, stdout, err = run_cli(capsys, "report", *mixed, "--out", tmp_path / "r")
    assert code == 0, err
    assert re.search(r"warning: rows evaluated different numbers of documents on 19 task\(s\)", err)
    assert "n=4; ref-mamba1 [mamba-steered] · unsteered: n=16" in err or "unsteered: n=16" in err
    assert "warning: 1 of 2 row(s) evaluated only the first documents of each task" in err
    assert "> **Warning:** rows evaluated different numbers of documents" in stdout
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count('<div class="warning">') == 2
    board = build_leaderboard(load_runs(mixed))
    steered = next(row for row in board.rows if row.steered)
    assert steered.deltas  # compared with the unsteered row despite the different n, and says so:
    gains = to_html(board, "t", {})
    assert "n=4 vs 16" in gains


def test_a_rerun_on_fewer_documents_that_replaces_a_result_is_named(tmp_path, capsys):
    full = results_file(tmp_path / "full", n=16, date=1.0)
    quick = results_file(tmp_path / "quick", n=4, limit=4, date=2.0)
    code, _, err = run_cli(capsys, "report", full, quick, "--out", tmp_path / "r")
    assert code == 0
    assert f"warning: {quick} (n=4) replaced {full} (n=16) on 21 task(s)" in err


# -- figures ---------------------------------------------------------------------------------------


def _texts(fig) -> list:
    """Every text a figure draws: titles, axis and tick labels inside the view, notes, legends."""
    found = [fig._suptitle, *fig.texts, *(t for legend in fig.legends for t in legend.get_texts())]
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        found += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis, (low, high) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            found += [t.label1 for t in axis.get_major_ticks() if low <= t.get_loc() <= high]
    return [t for t in dict.fromkeys(found) if t is not None and t.get_visible() and t.get_text().strip()]


def overlapping_texts(fig) -> list[tuple[str, str]]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer).padded(-1)) for t in _texts(fig)]
    return [(a, b) for (a, box_a), (b, box_b) in combinations(boxes, 2) if box_a.overlaps(box_b)]


@pytest.fixture
def figures(mixed):
    pytest.importorskip("matplotlib")
    from lm_eval_ssmsteer.report.plots import figures as draw

    board = build_leaderboard(load_runs(mixed))
    found = draw(board)
    yield board, found
    import matplotlib.pyplot as plt

    plt.close("all")


def test_no_text_of_a_figure_overlaps_another(figures):
    _, found = figures
    assert set(found) == {"accuracy_vs_length.png", "steering_gains.png"}
    for name, fig in found.items():
        assert len(_texts(fig)) > 20, name
        assert overlapping_texts(fig) == [], name


def test_length_plot_intervals_stay_within_0_1(figures):
    from matplotlib.collections import LineCollection

    board, found = figures
    fig = found["accuracy_vs_length.png"]
    segments = [seg for c in fig.findobj(LineCollection) for seg in c.get_segments()]
    assert len(segments) == len(board.rows) * len(LENGTH_TASKS) * len(LENGTHS) - len(LENGTHS)
    ys = [y for seg in segments for _, y in seg]
    assert min(ys) >= 0.0 and max(ys) <= 1.0
    assert any(seg[0][1] < seg[1][1] for seg in segments if seg[1][1] == 1.0), "a score of 1 keeps its bar"
    assert "Wilson" in fig._suptitle.get_text()


def test_a_missing_gain_is_drawn_as_not_available_not_as_zero(figures):
    from matplotlib.patches import Rectangle

    board, found = figures
    fig = found["steering_gains.png"]
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    # the row lacks two tasks, so it has no average either
    missing = {
        i for i, label in enumerate(labels) if label.startswith(("ssm_task03", "ssm_long2@", "average"))
    }
    assert len(missing) == 5
    not_available = [t for t in ax.texts if t.get_text() == "n/a"]
    assert sorted(round(t.get_position()[1]) for t in not_available) == sorted(missing)
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == len(missing)
    solid = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_hatch()]
    assert not any(round(p.get_y() + p.get_height() / 2) in missing for p in solid), "no bar where no gain"
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "n/a: nothing to compare" in legend


# -- regress: n too small to tell, n changed ------------------------------------------------------------


def _one_task(folder: Path, value: float, n: int, limit: int | None = None) -> Path:
    path = results_file(folder, n=n, limit=limit)
    data = json.loads(path.read_text())
    stderr = (value * (1 - value) / (n - 1)) ** 0.5
    data["results"] = {"ssm_task00": {"acc,none": value, "acc_stderr,none": stderr}}
    path.write_text(json.dumps(data))
    return path


def test_a_drop_that_n_cannot_resolve_is_inconclusive_not_a_pass(tmp_path, capsys):
    baseline = _one_task(tmp_path / "b", 0.5, n=4)
    current = _one_task(tmp_path / "c", 0.0, n=4)
    code, out, err = run_cli(capsys, "regress", "--baseline", baseline, "--current", current)
    assert code == 0  # not a failure: nothing was shown to regress; but not a pass either:
    assert re.search(
        r"\| ssm_task00 \| acc,none \| 4 \| 0\.5000 .* \| -0\.5000 \| .* \| inconclusive: n=4 \|", out
    )
    assert "within tolerance" not in out.split("\n\n")[0]
    assert "1 inconclusive" in out and "WARNING: inconclusive: 1 metric(s)" in err
    # with enough documents the same check resolves a small drop
    baseline = _one_task(tmp_path / "b2", 0.5, n=4000)
    current = _one_task(tmp_path / "c2", 0.49, n=4000)
    code, out, _ = run_cli(capsys, "regress", "--baseline", baseline, "--current", current)
    assert code == 0 and "| within tolerance |" in out and "0 inconclusive" in out


def test_a_different_n_between_baseline_and_current_is_reported(tmp_path, capsys):
    baseline = _one_task(tmp_path / "b", 0.5, n=16)
    current = _one_task(tmp_path / "c", 0.5, n=4, limit=4)
    code, _, err = run_cli(capsys, "regress", "--baseline", baseline, "--current", current)
    assert code == 2
    assert "task 'ssm_task00': n=16 documents in the baseline, n=4 documents (--limit 4) now" in err
    code, out, _ = run_cli(
        capsys, "regress", "--baseline", baseline, "--current", current, "--allow-config-mismatch", "--all"
    )
    assert code == 0
    assert re.search(r"\| ssm_task00 \| acc,none \| 16 → 4 \| 0\.5000 .* \| unchanged \|", out)
    assert "warning: compared despite: ref-mamba1 [mamba-steered] unsteered, task 'ssm_task00': n=16" in out


def test_a_sweep_of_many_specs_is_one_heatmap_not_a_bar_per_spec_and_task(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from lm_eval_ssmsteer.report.plots import MAX_PANELS, figures

    files = [results_file(tmp_path / "base", n=16)]
    for k in range(MAX_PANELS + 2):
        spec = {**SPEC, "interventions": [{**SPEC["interventions"][0], "scale": 2.0 + k}]}
        drop = ("ssm_task03",) if k == 0 else ()
        files.append(results_file(tmp_path / f"s{k}", n=16, steer=spec, drop=drop, shift=-0.05 * k))
    fig = figures(build_leaderboard(load_runs(files)))["steering_gains.png"]
    try:
        heatmap, colorbar = fig.axes
        assert len(heatmap.images) == 1
        assert len(heatmap.get_xticklabels()) == MAX_PANELS + 2
        assert [t.get_text() for t in heatmap.texts].count("n/a") == 2  # its task, and so its average
        assert overlapping_texts(fig) == []
    finally:
        plt.close("all")
