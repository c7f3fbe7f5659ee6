"""LaTIM alignment and knockout on needle retrieval (ssm_passkey, ssm_niah_single), tasks the reference
model solves.

    python scripts/interpret_needle.py --model ref-mamba1 --tasks ssm_passkey ssm_niah_single \\
        --n 20 --length 512 --window 2 --rollout-docs 2 --out docs/figures

Each test document is teacher-forced as ``context + " " + answer``. The needle span is the needle sentence
in the context (passkey: ``The pass key is K. Remember it. K is the pass key.``; niah: ``One of the
special magic numbers for <key> is: V.``); the exact positions of answer digit k are where digit k of
the answer is written in it (the passkey is written twice: either counts). For every answer digit, in
each layer's LaTIM (l2) mixer map and in the rollout, take the top source for two rows: the row that
predicts the digit (the token before it) and the digit's own row, over two source sets: the whole
context, and the haystack (the context before the final question line, so that the question's own
tokens, always close to the answer, cannot win). Reported per layer: span accuracy (top source in the
needle span), exact accuracy (top source on the digit's own position), AER = 1 − (|A∩S| + |A∩P|) /
(|A| + |S|) with A one top link per digit, S = the exact positions, P = the needle span; the mass share
of the needle span (sum of the row over the span / over the source set) against chance (span / set).

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

from lm_eval_ssmsteer.interpret.capture import capture_layers
from lm_eval_ssmsteer.interpret.knockout import KnockoutSpec, knockout
from lm_eval_ssmsteer.interpret.latim import latim_maps, latim_rows, rollout
from lm_eval_ssmsteer.interpret.output import pyplot, save_json, save_lines
from lm_eval_ssmsteer.mamba.arch import mamba_blocks
from lm_eval_ssmsteer.mamba.mixer_math import mixer_internals

VIEWS = ("predicting", "answer")
SOURCE_SETS = ("context", "haystack")
METRICS = ("span", "exact", "aer", "mass", "chance")


def needle_text(task: str, doc: dict) -> str:
    if task == "ssm_passkey":
        key = doc["target"]
        return f"The pass key is {key}. Remember it. {key} is the pass key."
    if task == "ssm_niah_single":
        return f"One of the special magic numbers for {doc['key']} is: {doc['target']}."
    raise ValueError(f"task {task!r} is not supported: choose ssm_passkey or ssm_niah_single")


def needle_document(task: str, doc: dict, tokenizer) -> dict:
    """Token ids and the positions the analysis needs (one token per character)."""
    context, answer = doc["context"], doc["target"]
    text = context + " " + answer
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    if ids.shape[1] != len(text):
        raise ValueError("interpret_needle expects a one-token-per-character tokenizer (the project's)")
    needle = needle_text(task, doc)
    if context.count(needle) != 1:
        raise ValueError(f"the needle {needle!r} occurs {context.count(needle)} times in the context")
    start = context.index(needle)
    span = list(range(start, start + len(needle)))
    occurrences = [start + i for i in range(len(needle)) if needle.startswith(answer, i)]
    exact = [[o + k for o in occurrences] for k in range(len(answer))]
    first = len(context) + 1
    answer_positions = list(range(first, first + len(answer)))
    haystack_end = context.rindex("\n")  # the final question line starts after it
    return {
        "ids": ids,
        "span": span,
        "exact": exact,
        "answer": answer_positions,
        "predicting": [p - 1 for p in answer_positions],
        "sets": {"context": len(context), "haystack": haystack_end},
    }


def count_links(scores: torch.Tensor, rows: list[int], d: dict, counts: dict) -> None:
    """Add one document's top-source links to counts[(view, set)] for one map (rows indexed absolutely
    by position, or a dict position -> row)."""
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
    n = c["links"]
    return {
        "span": c["span"] / n,
        "exact": c["exact"] / n,
        "aer": 1.0 - (c["exact"] + c["span"]) / (2 * n),
        "mass": c["mass"] / n,
        "chance": c["chance"] / n,
        "links": n,
    }


@torch.no_grad()
def answer_scores(model, ids: torch.Tensor, predicting: list[int]) -> tuple[float, float, float]:
    """Sum of p(gold digit), number of digit argmax hits, 1 if every digit is the argmax."""
    logits = model(input_ids=ids, use_cache=False).logits[0, predicting].float()
    gold = ids[0, [p + 1 for p in predicting]]
    probs = torch.softmax(logits, -1)[torch.arange(len(gold)), gold]
    hits = logits.argmax(-1) == gold
    return float(probs.sum()), float(hits.sum()), float(hits.all())


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


def analyse(model, tokenizer, task: str, args) -> tuple[dict, dict]:
    from lm_eval_ssmsteer.taskdata import generate

    blocks = mamba_blocks(model)
    layers = list(range(len(blocks)))
    kernel = blocks[0].mixer.conv1d.weight.shape[-1]
    docs = generate(task, "test", args.n, args.seed, length=args.length)
    empty = dict.fromkeys(("links", "span", "exact", "mass", "chance"), 0)
    counts = {
        (col, view, s): dict(empty) for col in [*layers, "rollout"] for view in VIEWS for s in SOURCE_SETS
    }
    windows = [tuple(range(a, a + args.window)) for a in range(len(blocks) - args.window + 1)]
    docs_parsed, example = [], {}
    started = time.perf_counter()
    for index, doc in enumerate(docs):
        d = needle_document(task, doc, tokenizer)
        d["intro_end"] = doc["context"].index("\n")
        docs_parsed.append(d)
        rows = list(range(d["predicting"][0], d["answer"][-1] + 1))
        captured = capture_layers(model, d["ids"], layers)
        with_rollout = index < args.rollout_docs
        block_maps, per_layer = [], {}
        for layer in layers:
            internals = mixer_internals(blocks[layer].mixer, captured[layer].mixer_input)
            if with_rollout:
                maps = latim_maps(internals, ("l2",), block_input=captured[layer].block_input)
                block_maps.append(maps["l2_block"])
                per_layer[layer] = maps["l2"][rows[0] : rows[-1] + 1]
            else:
                per_layer[layer] = latim_rows(internals, range(rows[0], rows[-1] + 1), ("l2",))["l2"]
            count_links(
                per_layer[layer], rows, d, {(v, s): counts[(layer, v, s)] for v in VIEWS for s in SOURCE_SETS}
            )
        if with_rollout:
            rolled = rollout(block_maps)[rows[0] : rows[-1] + 1]
            count_links(
                rolled, rows, d, {(v, s): counts[("rollout", v, s)] for v in VIEWS for s in SOURCE_SETS}
            )
            per_layer["rollout"] = rolled
        if index == 0:
            example = {"maps": per_layer, "d": d, "rows": rows}
    alignment_s = time.perf_counter() - started

    columns = [str(c) for c in layers] + (["rollout"] if args.rollout_docs else [])
    alignment = {
        view: {
            s: {col: summarise(counts[(int(col) if col != "rollout" else col, view, s)]) for col in columns}
            for s in SOURCE_SETS
        }
        for view in VIEWS
    }
    # the window the maps point to: highest mean predicting-row span accuracy (context sources)
    span_acc = {layer: alignment["predicting"]["context"][str(layer)]["span"] for layer in layers}
    pointed = max(windows, key=lambda w: sum(span_acc[layer] for layer in w))

    started = time.perf_counter()
    runs = {"none": None, **{f"{w[0]}-{w[-1]}": w for w in windows}, "all": tuple(layers)}
    totals = {name: torch.zeros(3) for name in [*runs, "control"]}
    digits = 0
    for d in docs_parsed:
        sources = d["span"] + list(range(d["span"][-1] + 1, d["span"][-1] + kernel))
        control = control_span(d, len(sources), kernel)
        digits += len(d["predicting"])
        for name, window in runs.items():
            if window is None:
                totals[name] += torch.tensor(answer_scores(model, d["ids"], d["predicting"]))
                continue
            with knockout(model, KnockoutSpec(window, tuple(sources), tuple(d["predicting"]))):
                totals[name] += torch.tensor(answer_scores(model, d["ids"], d["predicting"]))
        with knockout(model, KnockoutSpec(pointed, tuple(control), tuple(d["predicting"]))):
            totals["control"] += torch.tensor(answer_scores(model, d["ids"], d["predicting"]))
    knockout_s = time.perf_counter() - started
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
            "exact_answer": float(exact) / len(docs_parsed),
        }
    result = {
        "model": args.model,
        "task": task,
        "n_docs": len(docs_parsed),
        "length": args.length,
        "seed": args.seed,
        "rollout_docs": min(args.rollout_docs, len(docs_parsed)),
        "answer_digits": len(docs_parsed[0]["answer"]),
        "needle_span_tokens": len(docs_parsed[0]["span"]),
        "window": args.window,
        "pointed_window": list(pointed),
        "alignment": alignment,
        "knockout": knock,
        "seconds": {"alignment": round(alignment_s, 1), "knockout": round(knockout_s, 1)},
        "threads": torch.get_num_threads(),
    }
    return result, example


def write_figures(result: dict, example: dict, tokenizer, out: Path) -> None:
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

    plt = pyplot()
    d, rows, maps = example["d"], example["rows"], example["maps"]
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
    fig.suptitle(f"{result['model']} {task}: LaTIM l2, document 0", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / f"needle_{task}_latim.png", dpi=80)
    plt.close(fig)


def write_knockout_figure(results: list[dict], out: Path) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="ref-mamba1")
    parser.add_argument("--tasks", nargs="+", default=["ssm_passkey", "ssm_niah_single"])
    parser.add_argument("--n", type=int, default=20, help="test documents per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--length", type=int, default=512, help="document length in tokens")
    parser.add_argument("--window", type=int, default=2, help="layers per knockout window")
    parser.add_argument("--rollout-docs", type=int, default=2, help="documents with full maps and rollout")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_ssmsteer.loading import resolve_model_path

    path = resolve_model_path(args.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    results = []
    for task in args.tasks:
        result, example = analyse(model, tokenizer, task, args)
        write_figures(result, example, tokenizer, args.out)
        results.append(result)
        print(markdown(result) + "\n", flush=True)
    write_knockout_figure(results, args.out)


if __name__ == "__main__":
    main()
