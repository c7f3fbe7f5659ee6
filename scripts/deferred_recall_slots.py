"""How well a model answers the training-only task aux_deferred_recall (training/auxiliary.py), slot by slot.

    python scripts/deferred_recall_slots.py MODEL [MODEL ...] [--docs 64] [--pairs 4 8 16] [--seed 12345]

Teacher-forced on fresh documents that ask two keys (a seed the training streams do not use): the share
of documents whose whole answer is right, and of each slot's first digit (the digit that decides which
value is written; the rest of a value follows from it), right or the other asked key's (among documents
whose two values start with different digits). It is the niah multiquery slot count
(scripts/multiquery_slots.py) on the short format.
"""

from __future__ import annotations

import argparse

import torch

from lm_eval_ssmsteer.training import mix
from lm_eval_ssmsteer.training.auxiliary import deferred_recall


def slot_scores(model, pairs: int, docs: int, seed: int) -> dict[str, float]:
    """Shares of documents: the whole answer right (``exact``); each slot's first digit right (``slot 1``,
    ``slot 2``); and, among documents whose two values start with different digits, the slot's first digit
    that of the other asked key (``slot 1 other``, ``slot 2 other``: the order of the keys lost)."""
    texts = [
        ("aux_deferred_recall", text, spans)
        for doc in deferred_recall(docs, seed=seed, num_pairs=pairs, num_queries=2)
        for text, spans in mix.sequences(doc)
    ]
    exact, right, other, differ = 0, [0, 0], [0, 0], 0
    for example in mix.encode(texts):
        with torch.no_grad():
            predicted = model(torch.tensor([example.ids])).logits[0].argmax(-1).tolist()
        positions = [i for i, t in enumerate(example.targets) if t != -100]
        exact += all(predicted[i] == example.targets[i] for i in positions)
        # the answer " 893, 408.\n": positions 1 and 6 predict each value's first digit
        slots = (positions[1], positions[6])
        gold = [example.targets[i] for i in slots]
        differ += gold[0] != gold[1]
        for k, i in enumerate(slots):
            right[k] += predicted[i] == gold[k]
            other[k] += gold[0] != gold[1] and predicted[i] == gold[1 - k]
    n, d = len(texts), max(differ, 1)
    return {
        "exact": exact / n,
        "slot 1": right[0] / n,
        "slot 2": right[1] / n,
        "slot 1 other": other[0] / d,
        "slot 2 other": other[1] / d,
    }


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM

    from lm_eval_ssmsteer.loading import resolve_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="model folders or the package's short names (ref-mamba1)")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--pairs", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--seed", type=int, default=12345)
    a = p.parse_args(argv)
    print("| model | pairs | exact | slot 1 first digit: right / other key's | slot 2: right / other key's |")
    print("|---|---|---|---|---|")
    for name in a.models:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name), dtype=torch.float32).eval()
        for pairs in a.pairs:
            s = slot_scores(model, pairs, a.docs, a.seed)
            row = (
                f"| {name} | {pairs} | {s['exact']:.2f} | {s['slot 1']:.2f} / {s['slot 1 other']:.2f} "
                f"| {s['slot 2']:.2f} / {s['slot 2 other']:.2f} |"
            )
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
