"""scripts/deferred_recall_slots.py: positions 1 and 6 of the answer's targets are the values' first digits,
and a model that predicts the targets scores 1 everywhere."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from lm_eval_ssmsteer.training import mix
from lm_eval_ssmsteer.training.auxiliary import deferred_recall

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "deferred_recall_slots", ROOT / "scripts" / "deferred_recall_slots.py"
)
slots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(slots)


class _Oracle(torch.nn.Module):
    """Predicts each document's targets (found by its ids); ``swap`` writes slot 1's first digit in slot 2."""

    def __init__(self, examples, swap: bool = False):
        super().__init__()
        self.by_ids = {e.ids: e for e in examples}
        self.swap = swap

    def forward(self, ids):
        e = self.by_ids[tuple(ids[0].tolist())]
        logits = torch.zeros(1, len(e.ids), 128)
        positions = [i for i, t in enumerate(e.targets) if t != -100]
        for k, i in enumerate(positions):
            token = e.targets[positions[1]] if self.swap and k == 6 else e.targets[i]
            logits[0, i, token] = 1.0
        return type("Out", (), {"logits": logits})()


def test_slot_positions_and_scores():
    docs = deferred_recall(8, seed=3, num_pairs=5, num_queries=2)
    texts = [("aux_deferred_recall", t, s) for d in docs for t, s in mix.sequences(d)]
    examples = mix.encode(texts)
    for (_, text, _), e in zip(texts, examples, strict=True):
        answer = text[text.rindex(" are") + len(" are") :]  # " 893, 408.\n"
        positions = [i for i, t in enumerate(e.targets) if t != -100]
        v1, v2 = answer.strip(" .\n").split(", ")
        assert text[positions[1] + 1] == v1[0] and text[positions[6] + 1] == v2[0]
    perfect = slots.slot_scores(_Oracle(examples), 5, 8, 3)
    assert perfect == {"exact": 1.0, "slot 1": 1.0, "slot 2": 1.0, "slot 1 other": 0.0, "slot 2 other": 0.0}
    swapped = slots.slot_scores(_Oracle(examples, swap=True), 5, 8, 3)
    answers = [[t for t in e.targets if t != -100] for e in examples]
    same = sum(a[1] == a[6] for a in answers) / len(answers)  # slot 2 is right only where the digits agree
    assert same < 1.0
    assert (swapped["slot 1"], swapped["slot 2"], swapped["exact"]) == (1.0, same, same)
    assert (swapped["slot 1 other"], swapped["slot 2 other"]) == (0.0, 1.0)
