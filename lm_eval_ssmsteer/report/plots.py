"""The leaderboard's two plots: score vs context length, and steering gains; as figures and as PNG bytes.

matplotlib (the ``plots`` extra) is imported only when a plot is drawn, with the Agg backend, so a
report can be written on a machine without a display.
"""

from __future__ import annotations

import io
import math

from lm_eval_ssmsteer.report.intervals import interval
from lm_eval_ssmsteer.report.leaderboard import Leaderboard, Row

LENGTH_PLOT = "accuracy_vs_length.png"
GAINS_PLOT = "steering_gains.png"
CAPTIONS = {
    LENGTH_PLOT: "Score vs context length, one line per run (runs side by side at each length). Bars: the "
    "95% Wilson score interval over the n documents of that length for scores in [0, 1] (it stays in "
    "[0, 1] and keeps its width at 0 and 1); ±1.96·stderr for other scores; none where neither is known.",
    GAINS_PLOT: "Steered − the same model unsteered, per task column: a panel per steered run (up to 4; "
    "more make a heatmap, * where the interval excludes 0). Bars: 95% interval, Newcombe's from the two "
    "Wilson score intervals where both scores are proportions, else 1.96·√(se_a² + se_b²) from lm-eval's "
    "stderrs; a dot without a bar has no known interval. Hatched n/a: nothing to compare (the column has "
    "no score in the steered run or its reference).",
}
# rows with equal scores overlap exactly; distinct markers, dashes and a small sideways offset keep
# every row visible
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")
DODGE = 0.06  # sideways offset between runs, in log2(length) units
MAX_PANELS = 4  # steering gains: one panel per steered run up to this many, then a heatmap
NOT_AVAILABLE = "n/a"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed: the report is written without plots."""


def draw_plots(board: Leaderboard) -> dict[str, bytes]:
    """File name -> PNG bytes for each plot the data supports (lengths measured; steered rows present)."""
    return {name: to_png(fig) for name, fig in figures(board).items()}


def figures(board: Leaderboard) -> dict:
    """File name -> matplotlib Figure, for each plot the data supports."""
    found = {}
    if board.length_tasks:
        found[LENGTH_PLOT] = length_figure(board)
    if any(row.reference is not None for row in board.rows):
        found[GAINS_PLOT] = gains_figure(board)
    return found


def row_label(row: Row) -> str:
    return f"{row.rank_prefix}{row.label}"


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotsUnavailable(
            "no plots: matplotlib is not installed (pip install 'lm_eval_ssmsteer[plots]')"
        ) from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def length_figure(board: Leaderboard):
    plt = _pyplot()
    tasks = board.length_tasks
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(5 * ncols, 3.6 * nrows + 0.4 * len(board.rows)),
        squeeze=False,
        layout="constrained",
    )
    row_counts = [{row.run.tasks[t].n_samples for t in tasks if t in row.run.tasks} for row in board.rows]
    for ax, task in zip(axes.flat, tasks, strict=False):
        columns = board.length_columns(task)
        bounded = True
        for i, row in enumerate(board.rows):
            points = [(c.length, row.cells[c]) for c in columns if row.cells[c] is not None]
            if not points:
                continue
            shift = 2 ** ((i - (len(board.rows) - 1) / 2) * DODGE)
            xs = [length * shift for length, _ in points]
            (line,) = ax.plot(
                xs,
                [score.value for _, score in points],
                marker=MARKERS[i % len(MARKERS)],
                linestyle=LINESTYLES[i % len(LINESTYLES)],
                markersize=6,
                label=f"{row_label(row)} (n={_range(row_counts[i])})",
            )
            bars = [(x, score, interval(score)) for x, (_, score) in zip(xs, points, strict=True)]
            bars = [(x, score, ci) for x, score, ci in bars if ci is not None]
            if bars:
                ax.errorbar(
                    [x for x, _, _ in bars],
                    [score.value for _, score, _ in bars],
                    yerr=[
                        [score.value - ci[0] for _, score, ci in bars],
                        [ci[1] - score.value for _, score, ci in bars],
                    ],
                    fmt="none",
                    ecolor=line.get_color(),
                    capsize=3,
                )
            bounded &= all(0.0 <= score.value <= 1.0 for _, score in points)
        ax.set_xscale("log", base=2)
        lengths = [c.length for c in columns]
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("score")
        if bounded:
            ax.set_ylim(-0.04, 1.04)
        ns = {row.run.tasks[task].n_samples for row in board.rows if task in row.run.tasks}
        ax.set_title(f"{task} (n={_range(ns)} per length)", fontsize="medium")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize="small", ncols=1)
    fig.suptitle("Score vs context length (bars: 95% Wilson score interval over n documents)")
    return fig


def _range(counts: set[int | None]) -> str:
    known = sorted(n for n in counts if n is not None)
    if not known:
        return "?"
    return str(known[0]) if known[0] == known[-1] else f"{known[0]}–{known[-1]}"


def gains_figure(board: Leaderboard):
    """Up to MAX_PANELS steered runs: one panel each, side by side, the task columns down a shared axis,
    a bar with its interval per gain. More (a sweep of specs): a heatmap, a cell per task and run."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    steered = [row for row in board.rows if row.reference is not None]
    labels = [c.label for c in board.columns] + ["average"]
    deltas = [[row.deltas.get(c) for c in board.columns] + [row.average_delta] for row in steered]
    ends = [abs(x) for ds in deltas for d in ds if d for x in (d.value, d.low, d.high) if x is not None]
    limit = 1.1 * max([0.05, *ends])
    if len(steered) > MAX_PANELS:
        fig, gaps = _gains_heatmap(plt, steered, labels, deltas, limit)
    else:
        fig, axes = plt.subplots(
            1,
            len(steered),
            figsize=(max(9.0, 2.6 + 2.6 * len(steered)), 1.6 + 0.3 * len(labels)),
            sharex=True,
            sharey=True,
            squeeze=False,
            layout="constrained",
        )
        gaps = False
        for i, (ax, row) in enumerate(zip(axes.flat, steered, strict=True)):
            gaps |= _gains_panel(ax, deltas[i], limit, f"C{i}")
            ax.set_title(_run_lines(row), fontsize="small")
            ax.set_xlabel("steered − unsteered")
        axes.flat[0].set_yticks(range(len(labels)), labels)
        axes.flat[0].set_ylim(len(labels) - 0.5, -0.5)
        axes.flat[0].set_xlim(-limit, limit)
        fig.suptitle(
            "Steering gains over the same model unsteered\n(bars: 95% interval; Newcombe's for proportions)"
        )
    if gaps:
        fig.legend(
            [Patch(facecolor="none", edgecolor="0.6", hatch="///")],
            [f"{NOT_AVAILABLE}: nothing to compare (no score in the steered run or its reference)"],
            loc="outside lower center",
            fontsize="small",
        )
    return fig


def _run_lines(row: Row) -> str:
    run = row.run
    return (
        f"{row.rank_prefix}{run.model_label} [{run.backend}]\n{run.spec_label}\nvs {row.reference.spec_label}"
    )


def _gains_heatmap(plt, steered: list[Row], labels: list[str], deltas: list[list], limit: float):
    import matplotlib
    import numpy as np

    values = np.array([[np.nan if d is None else d.value for d in ds] for ds in deltas]).T  # (task, run)
    fig, ax = plt.subplots(figsize=(4.0 + 1.0 * len(steered), 2.5 + 0.3 * len(labels)), layout="constrained")
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="white")
    image = ax.imshow(values, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    gaps = False
    for x, ds in enumerate(deltas):
        for y, d in enumerate(ds):
            if d is None:
                gaps = True
                ax.add_patch(
                    matplotlib.patches.Rectangle(
                        (x - 0.5, y - 0.5), 1, 1, facecolor="none", edgecolor="0.6", hatch="///", lw=0
                    )
                )
                text, colour = NOT_AVAILABLE, "0.3"
            else:
                text = f"{d.value:+.2f}{'*' if d.significant else ''}"
                colour = "white" if abs(d.value) > 0.6 * limit else "black"
            ax.text(x, y, text, ha="center", va="center", fontsize="x-small", color=colour)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xticks(
        range(len(steered)),
        [f"{r.rank_prefix}{r.run.spec_label}" for r in steered],
        rotation=90,
    )
    fig.colorbar(image, ax=ax, shrink=0.5, label="steered − unsteered")
    model = ", ".join(dict.fromkeys(f"{r.run.model_label} [{r.run.backend}]" for r in steered))
    ax.set_title(
        f"Steering gains over the same model unsteered: {model}\n"
        "(* where the 95% interval excludes 0: Newcombe's for proportions)",
        fontsize="medium",
    )
    return fig, gaps


def _gains_panel(ax, deltas: list, limit: float, colour: str) -> bool:
    """One steered run's gains, a row per task column; returns whether any gain is missing."""
    shown = [(y, d) for y, d in enumerate(deltas) if d is not None]
    ax.barh([y for y, _ in shown], [d.value for _, d in shown], height=0.7, color=colour)
    # a dot on every measured gain: a gain of 0 stays visible, unlike a missing one
    ax.plot([d.value for _, d in shown], [y for y, _ in shown], "o", color=colour, markersize=4, zorder=3)
    known = [(y, d) for y, d in shown if d.low is not None]
    ax.errorbar(
        [d.value for _, d in known],
        [y for y, _ in known],
        xerr=[[d.value - d.low for _, d in known], [d.high - d.value for _, d in known]],
        fmt="none",
        ecolor="black",
        capsize=3,
    )
    missing = [y for y, d in enumerate(deltas) if d is None]
    for y in missing:
        ax.barh(y, 2 * limit, left=-limit, height=0.7, color="none", edgecolor="0.6", hatch="///", lw=0)
        ax.text(
            0,
            y,
            NOT_AVAILABLE,
            ha="center",
            va="center",
            fontsize="small",
            color="0.3",
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5},
        )
    ax.axvline(0.0, color="black", linewidth=0.8, zorder=1)
    ax.grid(True, axis="x", alpha=0.3)
    return bool(missing)
