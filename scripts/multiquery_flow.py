"""What each answer slot of ssm_niah_multiquery reads: knockout of the needles and the question's keys.

    python scripts/multiquery_flow.py --model ref-mamba1 --n 40 --length 512 [--out FILE.json]

`scripts/multiquery_slots.py` says how the models fail (issue 18): each model gets one slot of a two-key
answer right and fills the other with a needle that was not asked. This says what the slots read. Every
TEST document (two keys asked, four needles) is teacher-forced as ``context + " " + completion``
(``v1, v2.``); at the position that predicts each slot's first digit (the digit that decides the value),
the probability of the gold digit is measured unintervened and with the flow into that position blocked,
in every layer (`interpret.knockout`, one target position per forward), from:

- the needle of the slot's own key, the needle of the other queried key, the two distractor needles;
- the slot's own key in the question line (both mentions), the other queried key there;
- a control: filler characters of the haystack, as many as the own needle's span.

Each source span is widened by the conv_kernel − 1 positions after it, which read it through the causal
conv. Also: the unintervened argmax digit per slot, counted as the gold digit, the first digit of
another needle, or neither (teacher-forced, so slot 2 follows a correct slot 1). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from lm_eval_ssmsteer.interpret.knockout import KnockoutSpec, knockout
from lm_eval_ssmsteer.mamba.arch import mamba_blocks

SOURCES = (
    "own needle",
    "other key's needle",
    "distractor needles",
    "own key in question",
    "other key in question",
    "filler control",
)


FOLLOWS = ("the asked key's value", "the original key's value", "other")


def _all(text: str, sub: str, start: int = 0, end: int | None = None) -> list[int]:
    end = len(text) if end is None else end
    found, i = [], text.find(sub, start, end)
    while i != -1:
        found.append(i)
        i = text.find(sub, i + 1, end)
    return found


def _key_value(needle: str) -> tuple[str, str]:
    """("olive-ferret", "4907443") from "A magic number for olive-ferret is 4907443."."""
    key, value = needle.rstrip(".").split(" for ", 1)[1].split(" is ")
    return key, value


def slot_positions(doc: dict, reach: int = 3) -> dict:
    """Character positions (one token each) for one two-key document: per slot, the position predicting
    its first digit, its gold digit, and the spans of ``SOURCES``; the filler control keeps ``reach``
    positions (the conv's, conv_kernel − 1) clear of every needle on both sides."""
    context, completion = doc["context"], doc["completion"]
    keys, needles = doc["keys"], doc["needles"]
    if len(keys) != 2:
        raise ValueError(
            f"document {doc['index']} asks {len(keys)} keys; this diagnostic reads two-key documents"
        )
    text = context + " " + completion
    question = context.rindex("\n") + 1
    values = [v.strip(" .") for v in completion.split(",")]
    spans = {}
    for needle in needles:
        start = context.index(needle, 0, question)
        spans[needle] = list(range(start, start + len(needle)))
    starts = [len(context) + 1, len(context) + 1 + completion.index(values[1])]
    slots = []
    for slot, (key, value) in enumerate(zip(keys, values, strict=True)):
        other = keys[1 - slot]
        own = next(n for n in needles if f" {key} " in f" {n} ")
        other_needle = next(n for n in needles if f" {other} " in f" {n} ")
        distract = [n for n in needles if n not in (own, other_needle)]
        in_question = [p for i in _all(text, key, question, len(context)) for p in range(i, i + len(key))]
        other_in_question = [
            p for i in _all(text, other, question, len(context)) for p in range(i, i + len(other))
        ]
        haystack = range(context.index("\n") + 1, question - 1)
        taken = {p for n in needles for p in spans[n]}
        size = len(spans[own])
        filler = next(
            s
            for s in haystack
            if all(p not in taken and p - reach not in taken for p in range(s, s + size + reach))
        )
        slots.append(
            {
                "predicting": starts[slot] - 1,
                "gold": value[0],
                "other_firsts": [_key_value(n)[1][0] for n in needles if n != own],
                "sources": {
                    "own needle": spans[own],
                    "other key's needle": spans[other_needle],
                    "distractor needles": [p for n in distract for p in spans[n]],
                    "own key in question": in_question,
                    "other key in question": other_in_question,
                    "filler control": list(range(filler, filler + size)),
                },
            }
        )
    return {"text": text, "slots": slots}


def swapped_questions(doc: dict) -> list[dict]:
    """Counterfactual documents: per slot and distractor needle, the slot's key in the question line (both
    mentions) replaced by the distractor's key, the completion's value of that slot by the distractor's
    value (the haystack unchanged). Kept only where the two values' first digits differ, so the argmax
    digit tells which key the slot answered."""
    context, completion, keys = doc["context"], doc["completion"], doc["keys"]
    question = context.rindex("\n") + 1
    values = [v.strip(" .") for v in completion.split(",")]
    by_key = dict(_key_value(n) for n in doc["needles"])
    out = []
    for slot, key in enumerate(keys):
        for new_key, new_value in by_key.items():
            if new_key in keys or new_value[0] == values[slot][0]:
                continue
            prompt = context[:question] + context[question:].replace(key, new_key) + " "
            answer = list(values)
            answer[slot] = new_value
            start = len(prompt) + (0 if slot == 0 else len(answer[0]) + 2)  # "v1, v2."
            out.append(
                {
                    "slot": slot,
                    "text": prompt + ", ".join(answer) + ".",
                    "predicting": start - 1,
                    "asked": new_value[0],
                    "original": values[slot][0],
                }
            )
    return out


def _widen(span: list[int], kernel: int, length: int) -> tuple[int, ...]:
    return tuple(sorted({p + k for p in span for k in range(kernel) if p + k < length}))


def run(model, tokenizer, docs: list[dict], mode: str = "direct") -> dict:
    """Mean gold-digit probability per slot and blocked source; ``mode`` "all later": the flow from the
    source span to every later position (its whole influence), "direct": to the predicting position only."""
    blocks = mamba_blocks(model)
    kernel = blocks[0].mixer.conv1d.weight.shape[-1]
    layers = tuple(range(len(blocks)))
    totals = {slot: {name: 0.0 for name in ("none", *SOURCES)} for slot in (0, 1)}
    argmax = {slot: {"gold": 0, "another needle's first digit": 0, "neither": 0} for slot in (0, 1)}
    for doc in docs:
        d = slot_positions(doc, kernel - 1)
        ids = tokenizer(d["text"], return_tensors="pt", add_special_tokens=False).input_ids
        if ids.shape[1] != len(d["text"]):
            raise ValueError("this diagnostic expects a one-token-per-character tokenizer (the project's)")
        with torch.no_grad():  # unintervened: one forward serves both slots
            unintervened = model(input_ids=ids, use_cache=False).logits[0].float()
        for slot, s in enumerate(d["slots"]):
            p = s["predicting"]
            gold = int(ids[0, p + 1])
            logits = unintervened[p]
            totals[slot]["none"] += float(torch.softmax(logits, -1)[gold])
            top = tokenizer.decode([int(logits.argmax())])
            outcome = (
                "gold"
                if top == s["gold"]
                else "another needle's first digit"
                if top in s["other_firsts"]
                else "neither"
            )
            argmax[slot][outcome] += 1
            for name in SOURCES:
                sources = _widen(s["sources"][name], kernel, p)
                # every later position up to the predicting one: no path from the span around the block
                targets = tuple(range(sources[0] + 1, p + 1)) if mode == "all later" else (p,)
                spec = KnockoutSpec(layers, sources, targets)
                with knockout(model, spec), torch.no_grad():
                    logits = model(input_ids=ids, use_cache=False).logits[0, p].float()
                totals[slot][name] += float(torch.softmax(logits, -1)[gold])
    follows = {slot: dict.fromkeys(FOLLOWS, 0) for slot in (0, 1)}
    for doc in docs:
        for c in swapped_questions(doc):
            ids = tokenizer(c["text"], return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits[0, c["predicting"]]
            top = tokenizer.decode([int(logits.argmax())])
            outcome = FOLLOWS[0] if top == c["asked"] else FOLLOWS[1] if top == c["original"] else FOLLOWS[2]
            follows[c["slot"]][outcome] += 1
    n = len(docs)
    return {
        "question_swapped": {f"slot {slot + 1}": f for slot, f in follows.items()},
        "documents": n,
        "mean_gold_prob": {
            f"slot {slot + 1}": {k: v / n for k, v in t.items()} for slot, t in totals.items()
        },
        "argmax": {f"slot {slot + 1}": a for slot, a in argmax.items()},
    }


def markdown(result: dict) -> str:
    lines = [
        "| blocked, all layers | " + " | ".join(result["mean_gold_prob"]) + " |",
        "|---|" + "---|" * len(result["mean_gold_prob"]),
    ]
    for name in ("none", *SOURCES):
        lines.append(
            f"| {name} | " + " | ".join(f"{v[name]:.3f}" for v in result["mean_gold_prob"].values()) + " |"
        )
    lines += ["", "| unintervened argmax | " + " | ".join(result["argmax"]) + " |", "|---|---|---|"]
    for outcome in ("gold", "another needle's first digit", "neither"):
        lines.append(
            f"| {outcome} | " + " | ".join(str(a[outcome]) for a in result["argmax"].values()) + " |"
        )
    lines += ["", "| question key swapped for a distractor's: argmax first digit | slot 1 | slot 2 |"]
    lines += ["|---|---|---|"]
    for outcome in FOLLOWS:
        cells = " | ".join(str(f[outcome]) for f in result["question_swapped"].values())
        lines.append(f"| {outcome} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from lm_eval_ssmsteer.loading import load_model
    from lm_eval_ssmsteer.taskdata import generate

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="ref-mamba1")
    parser.add_argument("--n", type=int, default=40, help="TEST documents (two keys asked each)")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--targets",
        choices=("direct", "all later"),
        default="direct",
        help="block the flow from a source span to the predicting position only (default: the direct "
        "edges; what reaches it through the positions between stays) or to every later position (its "
        "whole influence; minutes a forward on the CPU)",
    )
    parser.add_argument("--out", default=None, help="JSON file for the result")
    a = parser.parse_args(argv)
    torch.manual_seed(a.seed)
    model, tokenizer = load_model(a.model, device="cpu")
    model.eval()
    docs = [
        d
        for d in generate("ssm_niah_multiquery", "test", a.n, a.seed, length=a.length)
        if len(d["keys"]) == 2
    ]
    started = time.perf_counter()
    result = {"model": a.model, "length": a.length, "seed": a.seed, "targets": a.targets}
    result |= run(model, tokenizer, docs, a.targets)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(markdown(result))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
