"""LaTIM alignment and knockout on needle retrieval (ssm_passkey, ssm_niah_single).

Both are tasks the reference model solves.

    ssmsteer study needle --model ref-mamba1 --tasks ssm_passkey ssm_niah_single \\
        --n 20 --length 512 --window 2 --rollout-docs 2 --out docs/figures

Each test document is teacher-forced as ``context + " " + answer``. The needle span is the needle in the
context: the haystack's sentences from the first to the last that state the answer (passkey: ``The pass
key is K. Remember it. K is the pass key.``; niah: ``One of the special magic numbers for <key> is:
V.``); the exact positions of answer digit k are where digit k of the answer is written in it (the
passkey is written twice: either counts). For every answer digit, in each layer's LaTIM (l2) mixer map
and in the rollout, take the top source for two rows: the row that predicts the digit (the token before
it) and the digit's own row, over two source sets: the whole context, and the haystack (the context
before the final question line, so that the question's own tokens, always close to the answer, cannot
win). Reported per layer: span accuracy (top source in the needle span), exact accuracy (top source on
the digit's own position), AER = 1 − (|A∩S| + |A∩P|) / (|A| + |S|) with A one top link per digit, S =
the exact positions, P = the needle span; the mass share of the needle span (sum of the row over the
span / over the source set) against chance (span / set).

Per-layer rows are computed alone (latim_rows, cheap); the rollout needs every layer's full map (l² cost)
and is computed on the first --rollout-docs documents only.

Knockout: block the flow from the needle span (plus the conv_kernel − 1 positions after it, which read
the needle through the causal conv) to the predicting positions, in every window of --window layers,
in all layers, and, as a control, from a filler span of the same size to the same positions in the
window the maps point to (the window with the highest mean predicting-row span accuracy). Teacher-forced:
mean probability of the gold digit, its relative change, digit argmax accuracy and exact-answer accuracy
(every digit the argmax).

Writes <out>/needle_<task>.json, needle_<task>_alignment.png, needle_<task>_latim.png (one document's
predicting rows over the context, best layer and rollout), needle_knockout.png; prints Markdown tables.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lm_eval_ssmsteer.interpret.knockout import KnockoutSpec, knockout
from lm_eval_ssmsteer.interpret.output import pyplot, save_json, save_lines
from lm_eval_ssmsteer.mamba.arch import mamba_blocks
from lm_eval_ssmsteer.studies.alignment import gold_probs, l2_maps

TASKS = ("ssm_passkey", "ssm_niah_single")
VIEWS = ("predicting", "answer")
SOURCE_SETS = ("context", "haystack")


def needle_span(context: str, answer: str) -> range:
    """Character positions of the needle in a long-context document (intro line, haystack, question
    line): the haystack's sentences from the first to the last that state the answer. The haystack's
    filler sentences hold no digits, so they never state it."""
    haystack_start, haystack_end = context.index("\n") + 1, context.rindex("\n")
    if answer not in context[haystack_start:haystack_end]:
        raise ValueError(f"the answer {answer!r} is not in the haystack: no needle to find")
    first = context.index(answer, haystack_start, haystack_end)
    last = context.rindex(answer, haystack_start, haystack_end)
    start = max(context.rfind(". ", haystack_start, first) + 2, haystack_start)
    end = context.index(".", last + len(answer)) + 1
    return range(start, end)


def needle_document(doc: dict, tokenizer) -> dict:
    """Token ids and the positions the analysis needs (one token per character)."""
    context, answer = doc["context"], doc["target"]
    text = context + " " + answer
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    if ids.shape[1] != len(text):
        raise ValueError("the needle study expects a one-token-per-character tokenizer (the project's)")
    span = needle_span(context, answer)
    needle = context[span.start : span.stop]
    occurrences = [span.start + i for i in range(len(needle)) if needle.startswith(answer, i)]
    first = len(context) + 1
    answer_positions = list(range(first, first + len(answer)))
    return {
        "ids": ids,
        "span": list(span),
        "exact": [[o + k for o in occurrences] for k in range(len(answer))],
        "answer": answer_positions,
        "predicting": [p - 1 for p in answer_positions],
        "sets": {"context": len(context), "haystack": context.rindex("\n")},  # the question line follows
        "intro_end": context.index("\n"),
    }


def empty_counts() -> dict:
    return dict.fromkeys(("links", "span", "exact", "mass", "chance"), 0)


def count_links(scores: torch.Tensor, rows: list[int], d: dict, counts: dict) -> None:
    """Add one document's top-source links of one map (its rows are ``rows``) to counts[(view, set)]."""
    span = set(d["span"])
    for view in VIEWS:
        for source_set, end in d["sets"].items():
            c = counts[(view, source_set)]
            for k, position in enumerate(d[view]):
                row = scores[rows.index(position)][:end]
                top = int(row.argmax())
                c["links"] += 1
                c["span"] += int(top in span)
                c["exact"] += int(top in d["exact"][k])
                total = float(row.sum())
                c["mass"] += float(row[d["span"]].sum()) / total if total > 0 else 0.0
                c["chance"] += len(d["span"]) / end


def summarise(c: dict) -> dict:
    """Shares of the counted links: span and exact accuracy, AER, mass share and chance."""
    n = c["links"]
    return {
        "span": c["span"] / n,
        "exact": c["exact"] / n,
        "aer": 1.0 - (c["exact"] + c["span"]) / (2 * n),
        "mass": c["mass"] / n,
        "chance": c["chance"] / n,
        "links": n,
    }


def answer_scores(model, ids: torch.Tensor, predicting: list[int]) -> torch.Tensor:
    """(sum of p(gold digit), number of digit argmax hits, 1 if every digit is the argmax)."""
    probs, hits = gold_probs(model, ids, predicting)
    return torch.tensor([float(probs.sum()), float(hits.sum()), float(hits.all())])


def control_span(d: dict, size: int, kernel: int) -> list[int]:
    """A filler span of ``size`` positions in the haystack next to the needle, touching neither it nor the
    positions that read it through the conv: right before the needle if the filler after the intro line has
    room for it there, else right after the needle's conv reach."""
    start, end = d["span"][0], d["span"][-1]
    if start - size > d["intro_end"]:
        return list(range(start - size, start))
    if end + kernel + size <= d["sets"]["haystack"]:
        return list(range(end + kernel, end + kernel + size))
    raise ValueError("no filler span of the needle's size fits in the haystack: use a longer --length")


def alignment(model, docs: list[dict], rollout_docs: int) -> tuple[dict, dict]:
    """view -> source set -> column (layer or "rollout") -> summary, over every document; and the first
    document's maps (for the figure)."""
    layers = list(range(len(mamba_blocks(model))))
    columns = layers + (["rollout"] if rollout_docs else [])
    counts = {(col, v, s): empty_counts() for col in columns for v in VIEWS for s in SOURCE_SETS}
    example: dict = {}
    for index, d in enumerate(docs):
        rows = list(range(d["predicting"][0], d["answer"][-1] + 1))
        maps = l2_maps(model, d["ids"], range(rows[0], rows[-1] + 1), with_rollout=index < rollout_docs)
        for col, scores in maps.items():
            count_links(scores, rows, d, {(v, s): counts[(col, v, s)] for v in VIEWS for s in SOURCE_SETS})
        if index == 0:
            example = {"maps": maps, "d": d, "rows": rows}
    summary = {
        view: {s: {str(col): summarise(counts[(col, view, s)]) for col in columns} for s in SOURCE_SETS}
        for view in VIEWS
    }
    return summary, example


def pointed_window(summary: dict, windows: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The window the maps point to: highest mean predicting-row span accuracy (context sources)."""
    span_acc = summary["predicting"]["context"]
    return max(windows, key=lambda w: sum(span_acc[str(layer)]["span"] for layer in w))


def knockouts(model, docs: list[dict], windows: list, pointed: tuple[int, ...]) -> dict:
    """Run name -> its scores: none, every window, all layers (sources: the needle span and its conv
    reach) and the control (a filler span of that size, in the pointed window)."""
    blocks = mamba_blocks(model)
    kernel = blocks[0].mixer.conv1d.weight.shape[-1]
    runs = {"none": None, **{f"{w[0]}-{w[-1]}": w for w in windows}, "all": tuple(range(len(blocks)))}
    totals = {name: torch.zeros(3) for name in [*runs, "control"]}
    digits = 0
    for d in docs:
        sources = d["span"] + list(range(d["span"][-1] + 1, d["span"][-1] + kernel))
        control = control_span(d, len(sources), kernel)
        digits += len(d["predicting"])
        for name, window in runs.items():
            if window is None:
                totals[name] += answer_scores(model, d["ids"], d["predicting"])
                continue
            with knockout(model, KnockoutSpec(window, tuple(sources), tuple(d["predicting"]))):
                totals[name] += answer_scores(model, d["ids"], d["predicting"])
        with knockout(model, KnockoutSpec(pointed, tuple(control), tuple(d["predicting"]))):
            totals["control"] += answer_scores(model, d["ids"], d["predicting"])
    base_prob = float(totals["none"][0]) / digits
    knock = {}
    for name, (prob, hits, exact) in totals.items():
        prob = float(prob) / digits
        knock[name] = {
            "layers": list(runs.get(name) or (pointed if name == "control" else [])),
            "sources": "filler span" if name == "control" else ("none" if name == "none" else "needle span"),
            "prob": prob,
            "relative_change_pct": 100 * (prob - base_prob) / base_prob,
            "digit_accuracy": float(hits) / digits,
            "exact_answer": float(exact) / len(docs),
        }
    return knock


def analyse(model, tokenizer, task: str, a: argparse.Namespace) -> tuple[dict, dict]:
    """One task's result (alignment, knockout, settings, seconds) and the first document's maps."""
    from lm_eval_ssmsteer.taskdata import generate

    if task not in TASKS:
        raise ValueError(f"task {task!r} is not supported: choose {' or '.join(TASKS)}")
    n_layers = len(mamba_blocks(model))
    windows = [tuple(range(start, start + a.window)) for start in range(n_layers - a.window + 1)]
    docs = [needle_document(doc, tokenizer) for doc in generate(task, "test", a.n, a.seed, length=a.length)]
    started = time.perf_counter()
    summary, example = alignment(model, docs, a.rollout_docs)
    alignment_s = time.perf_counter() - started
    pointed = pointed_window(summary, windows)
    started = time.perf_counter()
    knock = knockouts(model, docs, windows, pointed)
    knockout_s = time.perf_counter() - started
    result = {
        "model": a.model,
        "task": task,
        "n_docs": len(docs),
        "length": a.length,
        "seed": a.seed,
        "rollout_docs": min(a.rollout_docs, len(docs)),
        "answer_digits": len(docs[0]["answer"]),
        "needle_span_tokens": len(docs[0]["span"]),
        "window": a.window,
        "pointed_window": list(pointed),
        "alignment": summary,
        "knockout": knock,
        "seconds": {"alignment": round(alignment_s, 1), "knockout": round(knockout_s, 1)},
        "threads": torch.get_num_threads(),
    }
    return result, example


def save_latim_figure(result: dict, example: dict, tokenizer, path: Path) -> None:
    """One document's predicting rows over the context, in the best layer and the rollout."""
    plt = pyplot()
    d, rows, maps = example["d"], example["rows"], example["maps"]
    layers = [c for c in result["alignment"]["predicting"]["context"] if c != "rollout"]
    best = max(layers, key=lambda c: result["alignment"]["predicting"]["context"][c]["span"])
    panels = [int(best)] + (["rollout"] if "rollout" in maps else [])
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.6 + 1.4 * len(panels)), squeeze=False)
    end = d["sets"]["context"]
    picks = [rows.index(p) for p in d["predicting"]]
    for ax, key in zip(axes[:, 0], panels, strict=True):
        data = maps[key][picks][:, :end].numpy()
        image = ax.imshow(data, aspect="auto", interpolation="nearest", cmap="viridis")
        ax.axvspan(d["span"][0] - 0.5, d["span"][-1] + 0.5, color="red", alpha=0.15, lw=0)
        ax.set_yticks(range(len(picks)), [f"→{c}" for c in tokenizer.decode(d["ids"][0, d["answer"]])])
        ax.set_title(
            f"{'layer ' + str(key) if key != 'rollout' else 'rollout'}: predicting rows "
            "(shaded: needle span)",
            fontsize=9,
        )
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    axes[-1, 0].set_xlabel("source position in the context")
    fig.suptitle(f"{result['model']} {result['task']}: LaTIM l2, document 0", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_figures(result: dict, example: dict, tokenizer, out: Path) -> None:
    """needle_<task>.json, needle_<task>_alignment.png and needle_<task>_latim.png."""
    task = result["task"]
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / f"needle_{task}.json", result)
    layers = [c for c in result["alignment"]["predicting"]["context"] if c != "rollout"]
    series = {}
    for view in VIEWS:
        for s in SOURCE_SETS:
            series[f"{view} row, top of {s}"] = [result["alignment"][view][s][c]["span"] for c in layers]
    series["chance (context)"] = [result["alignment"]["predicting"]["context"][c]["chance"] for c in layers]
    save_lines(
        [int(c) for c in layers],
        series,
        out / f"needle_{task}_alignment.png",
        f"{task}: LaTIM l2 top source in the needle span",
        "layer",
        "share of answer digits",
    )
    save_latim_figure(result, example, tokenizer, out / f"needle_{task}_latim.png")


def write_knockout_figure(results: list[dict], out: Path) -> None:
    """needle_knockout.png: the relative change per window, one line per task."""
    series, starts = {}, None
    for r in results:
        names = [n for n in r["knockout"] if n not in ("none", "all", "control")]
        starts = [int(n.split("-")[0]) for n in names]
        series[r["task"]] = [r["knockout"][n]["relative_change_pct"] for n in names]
    save_lines(
        starts,
        series,
        out / "needle_knockout.png",
        f"knockout needle span -> answer, windows of {results[0]['window']} layers",
        "first layer of the window",
        "p(gold digit): relative change (%)",
    )


def markdown(result: dict) -> str:
    """The tables printed per task: alignment per layer, then the knockouts."""
    columns = list(result["alignment"]["predicting"]["context"])
    lines = [
        f"**{result['model']} {result['task']}**: {result['n_docs']} test documents of {result['length']} "
        f"tokens, {result['answer_digits']}-digit answers, needle span {result['needle_span_tokens']} "
        "tokens; "
        f"rollout on the first {result['rollout_docs']} documents",
        "",
        "| LaTIM l2 top source | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for view in VIEWS:
        for s in SOURCE_SETS:
            for metric in ("span", "exact", "aer", "mass"):
                cells = " | ".join(f"{result['alignment'][view][s][c][metric]:.3f}" for c in columns)
                lines.append(f"| {view} row, {s}: {metric} | {cells} |")
    chance = " | ".join(f"{result['alignment']['predicting']['context'][c]['chance']:.3f}" for c in columns)
    lines.append(f"| chance (span / context) | {chance} |")
    lines += [
        "",
        f"Window the maps point to: layers {result['pointed_window'][0]}-{result['pointed_window'][-1]}.",
        "",
        "| knockout (sources -> predicting positions) | layers | p(gold digit) | change | digit acc | "
        "exact answer |",
        "|---|---|---|---|---|---|",
    ]
    for name, k in result["knockout"].items():
        layers = f"{k['layers'][0]}-{k['layers'][-1]}" if k["layers"] else "-"
        lines.append(
            f"| {name} ({k['sources']}) | {layers} | {k['prob']:.3f} | {k['relative_change_pct']:+.1f}% | "
            f"{k['digit_accuracy']:.3f} | {k['exact_answer']:.3f} |"
        )
    lines.append(
        f"\nTime: alignment {result['seconds']['alignment']} s, knockout {result['seconds']['knockout']} s, "
        f"{result['threads']} thread(s)."
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="ref-mamba1")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--n", type=int, default=20, help="test documents per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--length", type=int, default=512, help="document length in tokens")
    parser.add_argument("--window", type=int, default=2, help="layers per knockout window")
    parser.add_argument("--rollout-docs", type=int, default=2, help="documents with full maps and rollout")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))


def run(a: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.loading import load_model

    model, tokenizer = load_model(a.model, field="--model")
    results = []
    for task in a.tasks:
        result, example = analyse(model, tokenizer, task, a)
        write_figures(result, example, tokenizer, a.out)
        results.append(result)
        print(markdown(result) + "\n", flush=True)
    write_knockout_figure(results, a.out)
    return 0
