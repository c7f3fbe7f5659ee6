"""Writing interpretation results: PNG heatmaps with token labels, NPZ matrices and JSON metadata.

matplotlib (the ``plots`` extra) is imported only when a figure is drawn, with the Agg backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

MAX_LABELLED_TOKENS = 64  # beyond this, label every k-th token so the axis stays readable


def pyplot():
    """matplotlib's ``pyplot`` on the Agg backend (no display needed), imported when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def token_labels(tokenizer, input_ids: Sequence[int]) -> list[str]:
    """One printable label per token: ``index:text`` with whitespace made visible."""
    labels = []
    for index, token_id in enumerate(input_ids):
        text = tokenizer.decode([int(token_id)])
        text = text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or f"<{int(token_id)}>"
        labels.append(f"{index}:{text}")
    return labels


def _ticks(labels: Sequence[str]) -> tuple[list[int], list[str]]:
    step = max(1, -(-len(labels) // MAX_LABELLED_TOKENS))
    positions = list(range(0, len(labels), step))
    return positions, [labels[p] for p in positions]


def save_heatmap(
    matrix: torch.Tensor | np.ndarray,
    labels: Sequence[str],
    path: str | Path,
    title: str,
    xlabel: str = "source token j",
    ylabel: str = "target token i",
    cmap: str = "viridis",
) -> Path:
    """A (l, l) map, rows = targets, columns = sources, each axis labelled with the tokens."""
    plt = pyplot()
    data = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    size = min(12.0, 3.0 + 0.16 * min(len(labels), MAX_LABELLED_TOKENS))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(data, cmap=cmap, aspect="auto", interpolation="nearest")
    positions, names = _ticks(labels)
    fontsize = 7 if len(positions) > 32 else 9
    ax.set_xticks(positions, names, rotation=90, fontsize=fontsize)
    ax.set_yticks(positions, names, fontsize=fontsize)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_lines(
    x: Sequence[float],
    series: dict[str, Sequence[float]],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """One line per series over x (e.g. knockout effect per window start)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in series.items():
        ax.plot(list(x), list(values), marker="o", label=name)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_npz(path: str | Path, arrays: dict[str, torch.Tensor | np.ndarray]) -> Path:
    """Compressed NPZ, one array per key (float32)."""
    path = Path(path)
    np.savez_compressed(
        path,
        **{
            k: (v.detach().cpu().float().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            for k, v in arrays.items()
        },
    )
    return path


def save_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path
