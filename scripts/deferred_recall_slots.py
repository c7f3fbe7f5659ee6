"""How well a model answers the training-only task aux_deferred_recall (training/auxiliary.py), slot by slot.

    python scripts/deferred_recall_slots.py MODEL [MODEL ...] [--docs 64] [--pairs 4 8 16] [--seed 12345]

Teacher-forced on fresh documents that ask two keys (a seed the training streams do not use): the share
of documents whose whole answer is right, and of each slot's first digit (the digit that decides which
value is written; the rest of a value follows from it). It is the niah multiquery slot count
(scripts/multiquery_slots.py) on the short format.
"""

from __future__ import annotations

import argparse

import torch

from lm_eval_ssmsteer.training import mix
from lm_eval_ssmsteer.training.auxiliary import deferred_recall


def slot_scores(model, pairs: int, docs: int, seed: int) -> dict[str, float]:
    texts = [
        ("aux_deferred_recall", text, spans)
        for doc in deferred_recall(docs, seed=seed, num_pairs=pairs, num_queries=2)
        for text, spans in mix.sequences(doc)
    ]
    exact, first, second = 0, 0, 0
    for example in mix.encode(texts):
        with torch.no_grad():
            predicted = model(torch.tensor([example.ids])).logits[0].argmax(-1).tolist()
        positions = [i for i, t in enumerate(example.targets) if t != -100]
        right = [predicted[i] == example.targets[i] for i in positions]
        # the answer " 893, 408.\n": positions 1 and 6 predict each value's first digit
        exact += all(right)
        first += right[1]
        second += right[6]
    n = len(texts)
    return {"exact": exact / n, "slot 1": first / n, "slot 2": second / n}


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM

    from lm_eval_ssmsteer.loading import resolve_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="model folders or the package's short names (ref-mamba1)")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--pairs", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--seed", type=int, default=12345)
    a = p.parse_args(argv)
    print("| model | pairs | exact | slot 1 first digit | slot 2 first digit |")
    print("|---|---|---|---|---|")
    for name in a.models:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name), dtype=torch.float32).eval()
        for pairs in a.pairs:
            s = slot_scores(model, pairs, a.docs, a.seed)
            row = f"| {name} | {pairs} | {s['exact']:.2f} | {s['slot 1']:.2f} | {s['slot 2']:.2f} |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
