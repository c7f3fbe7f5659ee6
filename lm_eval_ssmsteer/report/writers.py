"""The leaderboard as Markdown, CSV (wide leaderboard and one long row per score) and one self-contained
HTML page (sortable tables, plots inlined as base64 PNG), plus the plots as PNG files."""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path

from lm_eval_ssmsteer.report.leaderboard import Delta, Leaderboard, Row
from lm_eval_ssmsteer.report.paired import PairedDifference
from lm_eval_ssmsteer.report.results import Score, TaskResult, format_limit

MARKDOWN = "leaderboard.md"
CSV = "leaderboard.csv"
SCORES_CSV = "scores.csv"
PAIRED_CSV = "paired.csv"
ALPHA = 0.05  # a paired cell is marked where its Holm-corrected p-value is below this
HTML = "report.html"
NO_VALUE = "—"
NO_PLOTS = "No plots: no task reports scores by length and no run is steered."


def write_report(
    board: Leaderboard, out_dir: Path, title: str = "ssmsteer leaderboard"
) -> tuple[list[Path], str]:
    """Writes every format into ``out_dir``; returns the files written and, when matplotlib is missing,
    why there are no plots (the tables are written all the same, and the pages say so)."""
    from lm_eval_ssmsteer.report.plots import PlotsUnavailable, draw_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        plots, missing = draw_plots(board), ""
    except PlotsUnavailable as exc:
        plots, missing = {}, str(exc)
    files = {
        MARKDOWN: to_markdown(board, title, plot_files=list(plots), no_plots=missing).encode("utf-8"),
        CSV: to_csv(board).encode("utf-8"),
        SCORES_CSV: scores_csv(board).encode("utf-8"),
        **({PAIRED_CSV: paired_csv(board).encode("utf-8")} if board.baseline else {}),
        HTML: to_html(board, title, plots, no_plots=missing).encode("utf-8"),
        **plots,
    }
    written = []
    for name, data in files.items():
        path = out_dir / name
        path.write_bytes(data)
        written.append(path)
    return written, missing


def format_score(score: Score | None) -> str:
    if score is None:
        return NO_VALUE
    return f"{score.value:.4f}" if score.stderr is None else f"{score.value:.4f} ± {score.stderr:.4f}"


def format_delta(d: Delta | None) -> str:
    if d is None:
        return NO_VALUE
    interval = "[?]" if d.low is None else f"[{d.low:+.4f}, {d.high:+.4f}]"
    return f"{d.value:+.4f} {interval}{' *' if d.significant else ''}"


def format_n(task: TaskResult | None) -> str:
    """The documents behind a task's scores: ``n=16``; ``n=4 of 36`` when ``--limit`` cut it short."""
    if task is None:
        return ""
    n = "n=?" if task.n_samples is None else f"n={task.n_samples}"
    if task.limited and task.n_original is not None and task.n_original != task.n_samples:
        return f"{n} of {task.n_original}"
    return f"{n} ({format_limit(task.limit)})" if task.limited else n


EXPLANATION = (
    "Scores are value ± lm-eval stderr; n is the number of documents behind a score (for a task scored per "
    "length, per length). The average is the mean over tasks (a task measured at several lengths counts "
    "once, as the mean of its lengths) of the columns where higher is better; rows missing a task get no "
    "average and no rank. Δ: steered − the same model unsteered, [its 95% interval]: Newcombe's from the "
    "two Wilson score intervals where both scores are proportions (0/1 per document), else "
    "±1.96·√(se_a² + se_b²); [?] where unknown; * where the interval excludes 0."
)


PAIRED_EXPLANATION = (
    "Paired: each run − the baseline on the same documents (matched by lm-eval's document id and hashes): "
    "the mean difference, [its 95% paired bootstrap interval], and p, the exact two-sided McNemar test on "
    "the documents whose 0/1 score changed (the sign test for other scores), with Holm's correction over "
    "every p-value of the report beside it; * where the Holm-corrected p < 0.05 (for the average, which "
    "has no single test: where the interval excludes 0). n: documents paired, ↑/↓: documents whose "
    "score went up/down."
)


def format_p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def format_paired(d: PairedDifference | None) -> str:
    """``+0.0625 [+0.0000, +0.1250] p=0.5000 (Holm 1.0000)``."""
    if d is None:
        return NO_VALUE
    interval = "[?]" if d.low is None else f"[{d.low:+.4f}, {d.high:+.4f}]"
    test = "" if d.p_value is None else f" p={format_p(d.p_value)}"
    holm = "" if d.p_holm is None else f" (Holm {format_p(d.p_holm)})"
    return f"{d.mean:+.4f} {interval}{test}{holm}{' *' if paired_significant(d) else ''}"


def paired_significant(d: PairedDifference) -> bool:
    if d.p_holm is not None:
        return d.p_holm < ALPHA
    return d.p_value is None and d.excludes_zero


@dataclass(frozen=True)
class Cell:
    text: str
    sort: float | str | None = None  # what the HTML table sorts by; None sorts last
    numeric: bool = True
    significant: bool = False
    note: str = ""  # a second, smaller line: the cell's n
    lines: tuple[str, ...] = ()  # a header shown on several lines in HTML (``text`` joins them)


def _text(text: str) -> Cell:
    return Cell(text, text, numeric=False)


def _score(score: Score | None, task: TaskResult | None = None) -> Cell:
    if score is None:
        return Cell(NO_VALUE)
    return Cell(format_score(score), score.value, note=format_n(task))


def _delta(d: Delta | None, note: str = "") -> Cell:
    if d is None:
        return Cell(NO_VALUE)
    return Cell(format_delta(d), d.value, significant=d.significant, note=note)


def _paired(d: PairedDifference | None) -> Cell:
    if d is None:
        return Cell(NO_VALUE)
    note = f"n={d.n}: {d.up}↑ {d.down}↓"
    return Cell(format_paired(d), d.mean, significant=paired_significant(d), note=note)


def _run_header(row: Row, prefix: str = "") -> Cell:
    run = row.run
    lines = (f"{prefix}{run.model_label}", run.spec_label, f"[{run.backend}]")
    return Cell(" · ".join(lines), lines=lines)


Table = tuple[list[Cell], list[list[Cell]]]  # header, rows


def leaderboard_table(board: Leaderboard) -> Table:
    """One row per run: who it is, its documents, its average and gain; the scores per task follow in
    :func:`scores_table`, with the tasks as rows, so that the page stays as wide as the runs."""
    header = [
        Cell("rank"),
        _text("model"),
        _text("backend"),
        _text("steering"),
        _text("documents per task"),
        _text("limit"),
        Cell("average"),
        Cell("Δ average vs unsteered (95% CI)"),
        *([Cell("paired Δ average vs baseline (95% CI)")] if board.baseline else []),
    ]
    rows = [
        [
            Cell(NO_VALUE if row.rank is None else str(row.rank), row.rank),
            _text(row.run.model_label),
            _text(row.run.backend),
            _text(row.run.spec_label),
            _text(f"n={row.documents}"),
            _text(row.limits or NO_VALUE),
            _score(row.average),
            _delta(row.average_delta),
            *([_baseline_cell(board, row)] if board.baseline else []),
        ]
        for row in board.rows
    ]
    return header, rows


def _baseline_cell(board: Leaderboard, row: Row) -> Cell:
    return _text("baseline") if row is board.baseline else _paired(row.paired_average)


def paired_table(board: Leaderboard) -> Table:
    """Tasks as rows, every run but the baseline as columns: the paired difference from the baseline."""
    others = [row for row in board.rows if row is not board.baseline]
    header = [_text("task"), *(_run_header(row, "Δ ") for row in others)]
    rows = [
        [_text(column.label), *(_paired(row.paired.get(column)) for row in others)]
        for column in board.columns
    ]
    rows.append([_text("average"), *(_paired(row.paired_average) for row in others)])
    return header, rows


def paired_title(board: Leaderboard) -> str:
    return f"Paired differences vs the baseline {board.baseline.label}"


def scores_table(board: Leaderboard) -> Table:
    """Tasks as rows, runs as columns (in leaderboard order); every cell with its n."""
    header = [_text("task"), *(_run_header(row, row.rank_prefix) for row in board.rows)]
    rows = [
        [
            _text(column.label),
            *(_score(row.cells[column], row.run.tasks.get(column.task)) for row in board.rows),
        ]
        for column in board.columns
    ]
    return header, rows


def gains_table(board: Leaderboard) -> Table:
    """Tasks as rows, steered runs as columns: the gain over the same model unsteered."""
    steered = [row for row in board.rows if row.reference is not None]
    header = [_text("task"), *(_run_header(row, "Δ ") for row in steered)]
    if not steered:
        return header, []
    rows = [
        [
            _text(column.label),
            *(_delta(row.deltas.get(column), _pair_n(row, column.task)) for row in steered),
        ]
        for column in board.columns
    ]
    rows.append([_text("average"), *(_delta(row.average_delta) for row in steered)])
    return header, rows


def _pair_n(row: Row, task: str) -> str:
    """The n behind a gain: ``n=16``, or ``n=4 vs 16`` (steered vs reference) where they differ."""
    mine, theirs = row.run.tasks.get(task), row.reference.tasks.get(task) if row.reference else None
    if mine is None or theirs is None:
        return ""
    if mine.n_samples == theirs.n_samples:
        return format_n(mine)
    return f"n={mine.n_samples} vs {theirs.n_samples}"


def _markdown_table(table: Table) -> str:
    header, rows = table

    def text(cell: Cell) -> str:
        return f"{cell.text} ({cell.note})" if cell.note else cell.text

    def line(cells: list[Cell]) -> str:
        return "| " + " | ".join(text(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)])


def to_markdown(
    board: Leaderboard,
    title: str = "ssmsteer leaderboard",
    plot_files: tuple[str, ...] | list[str] = (),
    no_plots: str = "",
) -> str:
    from lm_eval_ssmsteer.report.plots import CAPTIONS

    parts = [f"# {title}", "", EXPLANATION, ""]
    for warning in board.warnings:
        parts += [f"> **Warning:** {warning}", ""]
    parts += [_markdown_table(leaderboard_table(board))]
    parts += ["", "## Scores per task", "", _markdown_table(scores_table(board))]
    gains = gains_table(board)
    if gains[1]:
        parts += ["", "## Steering gains per task", "", _markdown_table(gains)]
    if board.baseline:
        parts += [
            "",
            f"## {paired_title(board)}",
            "",
            PAIRED_EXPLANATION,
            "",
            _markdown_table(paired_table(board)),
        ]
    parts += [part for name in plot_files for part in ("", f"![{name}]({name})", "", f"*{CAPTIONS[name]}*")]
    parts += ["", f"*{no_plots}*"] if no_plots else []
    parts += ["", "## Sources", ""]
    parts += [f"- {row.label}: {', '.join(_sources(row))}" for row in board.rows]
    return "\n".join(parts) + "\n"


def _sources(row: Row) -> list[str]:
    return sorted({str(task.source) for task in row.run.tasks.values()})


def _number(x: float | None) -> str:
    return "" if x is None else repr(x)


def to_csv(board: Leaderboard) -> str:
    """The wide leaderboard: raw numbers, a value, a stderr and an n column per task column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    score_headers = [h for c in board.columns for h in (c.label, f"{c.label} stderr", f"{c.label} n")]
    writer.writerow(
        [
            "rank",
            "model",
            "backend",
            "steering",
            "steering_spec_sha256",
            "limit",
            *score_headers,
            "average",
            "average stderr",
            "delta average",
            "delta average ci95 low",
            "delta average ci95 high",
        ]
    )
    for row in board.rows:
        scores = [x for c in board.columns for x in _triple(row.cells[c])]
        d = row.average_delta
        writer.writerow(
            [
                row.rank or "",
                row.run.model,
                row.run.backend,
                row.run.spec_label,
                row.run.steering_spec_sha256 or "",
                row.limits,
                *scores,
                *_triple(row.average)[:2],
                _number(d.value if d else None),
                _number(d.low if d else None),
                _number(d.high if d else None),
            ]
        )
    return buffer.getvalue()


def _triple(score: Score | None) -> tuple[str, str, str]:
    if score is None:
        return "", "", ""
    return _number(score.value), _number(score.stderr), "" if score.n is None else str(score.n)


def paired_csv(board: Leaderboard) -> str:
    """Every paired difference from the baseline, one per run and task column (and the average)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "model",
            "backend",
            "steering",
            "steering_spec_sha256",
            "task",
            "metric",
            "filter",
            "length",
            "n",
            "delta",
            "ci95 low",
            "ci95 high",
            "up",
            "down",
            "test",
            "p",
            "p holm",
            "baseline",
        ]
    )
    for row in board.rows:
        if row is board.baseline:
            continue
        cells = [(c.task, c.key.metric, c.key.filter, c.length, row.paired.get(c)) for c in board.columns]
        for task, metric, filter_name, length, d in [*cells, ("average", "", "", None, row.paired_average)]:
            if d is None:
                continue
            writer.writerow(
                [
                    row.run.model,
                    row.run.backend,
                    row.run.spec_label,
                    row.run.steering_spec_sha256 or "",
                    task,
                    metric,
                    filter_name,
                    "" if length is None else length,
                    d.n,
                    _number(d.mean),
                    _number(d.low),
                    _number(d.high),
                    d.up,
                    d.down,
                    d.test or "",
                    _number(d.p_value),
                    _number(d.p_holm),
                    board.baseline.label,
                ]
            )
    return buffer.getvalue()


def scores_csv(board: Leaderboard) -> str:
    """Every score of every run, one per line (all metrics, not only the leaderboard's columns)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "model",
            "backend",
            "steering",
            "steering_spec_sha256",
            "task",
            "version",
            "metric",
            "filter",
            "length",
            "value",
            "stderr",
            "n",
            "n_original",
            "limit",
            "higher_is_better",
            "source",
        ]
    )
    for row in board.rows:
        run = row.run
        for name, task in sorted(run.tasks.items()):
            for key, score in task.scores.items():
                writer.writerow(
                    [
                        run.model,
                        run.backend,
                        run.spec_label,
                        run.steering_spec_sha256 or "",
                        name,
                        task.version,
                        key.metric,
                        key.filter,
                        "" if key.length is None else key.length,
                        _number(score.value),
                        _number(score.stderr),
                        "" if task.n_samples is None else task.n_samples,
                        "" if task.n_original is None else task.n_original,
                        _number(task.limit),
                        task.is_higher_better(key),
                        task.source,
                    ]
                )
    return buffer.getvalue()


# Sorting reads each cell's data-sort (a number, or empty for no value, which always sorts last).
_SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, index) {
    th.addEventListener("click", function () {
      var descending = th.getAttribute("aria-sort") !== "descending";
      table.querySelectorAll("th").forEach(function (other) { other.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[index].dataset.sort, y = b.cells[index].dataset.sort;
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return descending ? -order : order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
div.scroll { overflow: auto; max-width: 100%; max-height: 85vh; width: fit-content; margin: 1em 0;
             border: 1px solid #ccc; }
table { border-collapse: separate; border-spacing: 0; font-size: 14px; }
th, td { border-right: 1px solid #ddd; border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right;
         white-space: nowrap; background: #fff; }
td.text, th.text { text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; white-space: normal; min-width: 6em;
     vertical-align: bottom; }
thead th { position: sticky; top: 0; z-index: 2; }
td:first-child, th:first-child { position: sticky; left: 0; z-index: 1; }
thead th:first-child { z-index: 3; }
th[aria-sort="descending"]::after { content: " ▼"; }
th[aria-sort="ascending"]::after { content: " ▲"; }
td.significant { font-weight: bold; }
span.line { display: block; white-space: nowrap; }
span.n { display: block; font-size: 11px; color: #666; font-weight: normal; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
figcaption { max-width: 60em; color: #555; }
p.note { max-width: 60em; color: #555; }
div.warning { max-width: 60em; background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.5em 1em;
              margin: 0.5em 0; }
"""


def _breakable(label: str) -> str:
    """Task names are long words: let a header wrap after ``_`` and before ``@``."""
    return html.escape(label).replace("_", "_<wbr>").replace("@", "<wbr>@")


def _html_table(table_id: str, table: Table) -> str:
    header, rows = table

    def attrs(cell: Cell) -> str:
        classes = " ".join(
            name for name, on in (("text", not cell.numeric), ("significant", cell.significant)) if on
        )
        return f' class="{classes}"' if classes else ""

    def td(cell: Cell) -> str:
        sort = (
            "" if cell.sort is None else (repr(cell.sort) if isinstance(cell.sort, float) else str(cell.sort))
        )
        note = f'<span class="n">{html.escape(cell.note)}</span>' if cell.note else ""
        return f'<td{attrs(cell)} data-sort="{html.escape(sort)}">{html.escape(cell.text)}{note}</td>'

    def th(cell: Cell) -> str:
        text = (
            "".join(f'<span class="line">{html.escape(line)}</span>' for line in cell.lines)
            if cell.lines
            else _breakable(cell.text)
        )
        return f'<th{attrs(cell)} title="click to sort">{text}</th>'

    head = "".join(map(th, header))
    body = "\n".join(f"<tr>{''.join(map(td, cells))}</tr>" for cells in rows)
    return (
        f'<div class="scroll"><table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_html(board: Leaderboard, title: str, plots: dict[str, bytes], no_plots: str = "") -> str:
    from lm_eval_ssmsteer.report.plots import CAPTIONS

    warnings = "\n".join(
        f'<div class="warning"><b>Warning:</b> {html.escape(w)}</div>' for w in board.warnings
    )
    leaderboard = _html_table("leaderboard", leaderboard_table(board))
    scores = _html_table("scores", scores_table(board))
    gains_header, gains_rows = gains_table(board)
    gains = ""
    if gains_rows:
        gains = "<h2>Steering gains per task</h2>\n" + _html_table("gains", (gains_header, gains_rows))
    if board.baseline:
        heading, note = html.escape(paired_title(board)), html.escape(PAIRED_EXPLANATION)
        gains += f'\n<h2>{heading}</h2>\n<p class="note">{note}</p>\n' + _html_table(
            "paired", paired_table(board)
        )
    figures = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="{_data_url(png)}">'
        f"<figcaption>{html.escape(name)}: {html.escape(CAPTIONS[name])}</figcaption></figure>"
        for name, png in plots.items()
    )
    sources = "\n".join(
        f"<li>{html.escape(row.label)}: {html.escape(', '.join(_sources(row)))}</li>" for row in board.rows
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">{html.escape(EXPLANATION)} Click a column header to sort.</p>
{warnings}
{leaderboard}
<h2>Scores per task</h2>
{scores}
{gains}
<h2>Plots</h2>
{figures or f"<p>{html.escape(no_plots or NO_PLOTS)}</p>"}
<h2>Sources</h2>
<ul>
{sources}
</ul>
<script>{_SORT_SCRIPT}</script>
</body></html>
"""
