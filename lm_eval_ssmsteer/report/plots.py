"""The leaderboard's two plots, as PNG bytes: score vs context length, and steering gains.

matplotlib (the ``plots`` extra) is imported only when a plot is drawn, with the Agg backend, so a
report can be written on a machine without a display.
"""

from __future__ import annotations

import io
import math

from lm_eval_ssmsteer.report.leaderboard import Z_95, Leaderboard, Row

LENGTH_PLOT = "accuracy_vs_length.png"
# rows with equal scores overlap exactly; distinct markers and dashes keep every row visible
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")
GAINS_PLOT = "steering_gains.png"


def draw_plots(board: Leaderboard) -> dict[str, bytes]:
    """File name -> PNG bytes for each plot the data supports (lengths measured; steered rows present)."""
    plots = {}
    if board.length_tasks:
        plots[LENGTH_PLOT] = _length_plot(board)
    if any(row.reference is not None for row in board.rows):
        plots[GAINS_PLOT] = _gains_plot(board)
    return plots


def row_label(row: Row) -> str:
    return f"{row.run.model_label} · {row.run.spec_label}"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed: the report is written without plots."""


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


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _length_plot(board: Leaderboard) -> bytes:
    plt = _pyplot()
    tasks = board.length_tasks
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        columns = board.length_columns(task)
        for i, row in enumerate(board.rows):
            points = [(c.length, row.cells[c]) for c in columns if row.cells[c] is not None]
            if points:
                ax.errorbar(
                    [length for length, _ in points],
                    [score.value for _, score in points],
                    yerr=[Z_95 * (score.stderr or 0.0) for _, score in points],
                    marker=MARKERS[i % len(MARKERS)],
                    linestyle=LINESTYLES[i % len(LINESTYLES)],
                    markersize=7 - (i % 3),
                    capsize=3,
                    label=row_label(row),
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length")
        ax.set_ylabel(columns[0].key.metric if columns[0].length is None else "score")
        ax.set_title(task)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18))
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    fig.suptitle("Score vs context length (bars: 95% interval where lm-eval reports a stderr)")
    return _png(plt, fig)


def _gains_plot(board: Leaderboard) -> bytes:
    plt = _pyplot()
    steered = [row for row in board.rows if row.reference is not None]
    labels = [c.label for c in board.columns] + ["average"]
    height = 0.8 / len(steered)
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.3 * len(labels) * len(steered) ** 0.5))
    for i, row in enumerate(steered):
        deltas = [row.deltas.get(c) for c in board.columns] + [row.average_delta]
        positions = [y + (i - (len(steered) - 1) / 2) * height for y in range(len(labels))]
        ax.barh(
            positions,
            [d.value if d is not None else 0.0 for d in deltas],
            height=height,
            xerr=[d.half_width if d is not None and d.half_width is not None else 0.0 for d in deltas],
            capsize=3,
            label=f"{row_label(row)} vs {row.reference.spec_label}",
        )
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("steered − unsteered (bars: 95% interval where known)")
    ax.set_title("Steering gains over the same model unsteered")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15))
    return _png(plt, fig)
