"""Token-to-token alignment (LaTIM l2 and ALTI, hidden attention) and knockout on the copy task (ssm_copy)
for the reference models, Mamba-1, Mamba-2 or a hybrid (its Mamba layers' maps, by decoder index, without
a rollout; knockout windows over every decoder layer, blocking the attention edges as well).

    ssmsteer study copy --models ref-mamba1 --n 40 --out docs/figures

Each document is the teacher-forced text ``$ s | s``: the source span is the first ``s``, the copy the
second. For every copied letter s[k] we ask where each layer's map points, within the source span:
  * "copied": the row of the copied token s[k] itself;
  * "predicting": the row of the position that predicts s[k] (the token before it).
Gold (sure) link: the source position of s[k]; possible links: any source position holding the same
letter. AER = 1 − (|A∩S| + |A∩P|) / (|A| + |S|), with A one argmax link per row; accuracy = exact hits.
The maps (--methods): LaTIM "l2" and "alti" per layer and their rollout, and "attention", the hidden
attention (α averaged over channels). Chance is 1/len(s) for the accuracy.

Knockout: in each window of --window consecutive layers, block the flow from the whole source span to
the predicting positions (all features) and measure, teacher-forced, the mean probability of the correct
copied letter, its relative change, and the share of letters still predicted (argmax).

Writes <out>/copy_<model>_alignment.png, copy_<model>_latim.png, copy_<model>_knockout.png and
copy_<model>.json; prints Markdown tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lm_eval_ssmsteer.interpret.knockout import KnockoutSpec, knockout
from lm_eval_ssmsteer.interpret.output import save_heatmap, save_json, save_lines, token_labels
from lm_eval_ssmsteer.mamba.arch import describe_model
from lm_eval_ssmsteer.studies.alignment import MAP_METHODS, gold_probs, token_maps

VIEWS = ("copied", "predicting")


def copy_document(doc: dict, tokenizer) -> tuple[torch.Tensor, list[int], list[int], str]:
    """Token ids of ``context + " " + target``, source positions, copy positions and the string."""
    text = doc["context"] + " " + doc["target"]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    s = doc["target"]
    if ids.shape[1] != len(text):
        raise ValueError("the copy study expects a one-token-per-character tokenizer (the project's)")
    first = doc["context"].index(s)
    second = len(doc["context"]) + 1
    return ids, list(range(first, first + len(s))), list(range(second, second + len(s))), s


def alignment_counts(scores: torch.Tensor, rows: list[int], sources: list[int], s: str) -> dict[str, int]:
    """Argmax within the source span for each row; exact hits and AER counts for one document."""
    span = scores[rows][:, sources]  # (n, n)
    picked = span.argmax(-1).tolist()
    sure = sum(int(p == k) for k, p in enumerate(picked))
    possible = sum(int(s[p] == s[k]) for k, p in enumerate(picked))  # P ⊇ S: the same letter
    return {"links": len(rows), "sure": sure, "possible": possible}


def aer(counts: dict[str, int]) -> float:
    """1 − (|A∩S| + |A∩P|) / (|A| + |S|), one link a row."""
    return 1.0 - (counts["sure"] + counts["possible"]) / (2 * counts["links"])


def copy_probs(model, ids: torch.Tensor, predicting: list[int]) -> torch.Tensor:
    """(2, n): the probability of the correct next letter at each predicting position, and argmax hits."""
    return torch.stack(gold_probs(model, ids, predicting))


def summarise(counts: dict, columns: dict) -> dict:
    """method -> view -> column -> alignment accuracy and AER (``columns``: method -> its columns)."""
    return {
        method: {
            view: {
                str(col): {
                    "accuracy": counts[(method, view, col)]["sure"] / counts[(method, view, col)]["links"],
                    "aer": aer(counts[(method, view, col)]),
                }
                for col in cols
            }
            for view in VIEWS
        }
        for method, cols in columns.items()
    }


def knocked_rows(sums: dict, letters: int) -> list[dict]:
    """One row per knockout window: p(correct letter), argmax hits, relative change against no knockout."""
    base_prob, _ = (sums[None] / letters).tolist()
    rows = []
    for window, total in sums.items():
        if window is None:
            continue
        prob, hit = (total / letters).tolist()
        rows.append(
            {
                "layers": list(window),
                "prob": prob,
                "argmax_hit": hit,
                "relative_change_pct": 100 * (prob - base_prob) / base_prob,
            }
        )
    return rows


def analyse(model, tokenizer, name: str, a: argparse.Namespace) -> tuple[dict, dict]:
    """Alignment per layer (and rollout) and knockout per window; also the first document's maps."""
    from lm_eval_ssmsteer.taskdata import generate

    arch = describe_model(model)
    n_layers, mamba_layers = arch.n_layers, list(arch.steerable_layers)  # a hybrid: its Mamba layers
    chained = arch.mamba_layers is None  # a hybrid's attention layers have no block map: no rollout
    columns = {m: [*mamba_layers, *(["rollout"] if m != "attention" and chained else [])] for m in a.methods}
    # knockout windows run over every decoder layer: in a hybrid they block attention edges too
    windows = [tuple(range(start, start + a.window)) for start in range(n_layers - a.window + 1)]
    docs = generate("ssm_copy", "test", a.n, a.seed, **({"length": a.length} if a.length else {}))
    counts = {
        (m, v, col): dict.fromkeys(("links", "sure", "possible"), 0)
        for m, cols in columns.items()
        for v in VIEWS
        for col in cols
    }
    sums = {window: torch.zeros(2) for window in [None, *windows]}  # None: no knockout
    letters, example = 0, {}
    for index, doc in enumerate(docs):
        ids, sources, copy, s = copy_document(doc, tokenizer)
        predicting = [p - 1 for p in copy]
        maps = token_maps(model, ids, tuple(a.methods))
        for method, by_column in maps.items():
            for col, scores in by_column.items():
                for view, rows in zip(VIEWS, (copy, predicting), strict=True):
                    for key, value in alignment_counts(scores, rows, sources, s).items():
                        counts[(method, view, col)][key] += value
        if index == 0:
            example = {"maps": maps[a.methods[0]], "labels": token_labels(tokenizer, ids[0].tolist())}
        letters += len(predicting)
        sums[None] += copy_probs(model, ids, predicting).sum(-1)
        for w in windows:
            with knockout(model, KnockoutSpec(w, tuple(sources), tuple(predicting))):
                sums[w] += copy_probs(model, ids, predicting).sum(-1)
    base_prob, base_hit = (sums[None] / letters).tolist()
    result = {
        "model": name,
        "n_docs": a.n,
        "seed": a.seed,
        "string_length": len(docs[0]["target"]),
        "chance_accuracy": 1 / len(docs[0]["target"]),
        "methods": list(a.methods),
        "base": {"prob": base_prob, "argmax_hit": base_hit},
        "alignment": summarise(counts, columns),
        "window": a.window,
        "knockout": knocked_rows(sums, letters),
    }
    return result, example


def write_figures(result: dict, example: dict, out: Path) -> None:
    tag = Path(result["model"]).name
    first = result["methods"][0]
    layers = [int(k) for k in result["alignment"][first]["predicting"] if k != "rollout"]
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / f"copy_{tag}.json", result)
    accuracy = {
        f"{method}, {view} row": [
            result["alignment"][method][view][str(layer)]["accuracy"] for layer in layers
        ]
        for method in result["methods"]
        for view in VIEWS
    }
    save_lines(
        layers,
        accuracy,
        out / f"copy_{tag}_alignment.png",
        f"{tag}: map argmax = source position, ssm_copy (chance {result['chance_accuracy']:.3f})",
        "layer",
        "alignment accuracy",
    )
    best = max(layers, key=lambda layer: result["alignment"][first]["predicting"][str(layer)]["accuracy"])
    save_heatmap(
        example["maps"][best],
        example["labels"],
        out / f"copy_{tag}_latim.png",
        f"{tag} layer {best}: {first}, one copy document",
    )
    change = {"p(correct letter)": [k["relative_change_pct"] for k in result["knockout"]]}
    save_lines(
        [k["layers"][0] for k in result["knockout"]],
        change,
        out / f"copy_{tag}_knockout.png",
        f"{tag}: knockout source span -> copy, windows of {result['window']} layers",
        "first layer of the window",
        "relative change (%)",
    )


NAMES = {"l2": "LaTIM l2", "alti": "LaTIM ALTI", "attention": "hidden attention"}


def markdown(result: dict) -> str:
    base = result["base"]
    first = result["methods"][0]
    columns = list(result["alignment"][first]["predicting"])
    lines = [
        f"**{result['model']}**: {result['n_docs']} test documents, strings of {result['string_length']} "
        f"letters (chance accuracy {result['chance_accuracy']:.3f}); teacher-forced p(correct letter) = "
        f"{base['prob']:.3f}, argmax hit = {base['argmax_hit']:.3f}",
        "",
        "| map | row | metric | " + " | ".join(f"layer {c}" if c != "rollout" else c for c in columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for method in result["methods"]:
        for view in VIEWS:
            for metric in ("accuracy", "aer"):
                by_col = result["alignment"][method][view]
                cells = " | ".join(f"{by_col[c][metric]:.3f}" if c in by_col else "–" for c in columns)
                lines.append(f"| {NAMES[method]} | {view} | {metric} | {cells} |")
    lines += ["", "| knockout window | p(correct letter) | change | argmax hit |", "|---|---|---|---|"]
    for k in result["knockout"]:
        lines.append(
            f"| {k['layers'][0]}-{k['layers'][-1]} | {k['prob']:.3f} | "
            f"{k['relative_change_pct']:+.1f}% | {k['argmax_hit']:.3f} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=["ref-mamba1"], help="short names or folders")
    parser.add_argument("--n", type=int, default=40, help="test documents")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=2, help="layers per knockout window")
    parser.add_argument("--length", type=int, help="string length (default: the task's)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=MAP_METHODS,
        default=list(MAP_METHODS),
        help="token-to-token maps to score (default: all; the first one is drawn as a heatmap)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))


def run(a: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.loading import load_model

    for name in a.models:
        model, tokenizer = load_model(name, field="--models")
        result, example = analyse(model, tokenizer, name, a)
        write_figures(result, example, a.out)
        print(markdown(result) + "\n")
    return 0
