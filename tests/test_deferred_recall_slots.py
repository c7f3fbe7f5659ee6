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
    """Predicts each document's targets (found by its ids); ``wrong_second`` spoils slot 2's first digit."""

    def __init__(self, examples, wrong_second: bool = False):
        super().__init__()
        self.by_ids = {e.ids: e for e in examples}
        self.wrong_second = wrong_second

    def forward(self, ids):
        e = self.by_ids[tuple(ids[0].tolist())]
        logits = torch.zeros(1, len(e.ids), 128)
        positions = [i for i, t in enumerate(e.targets) if t != -100]
        for k, i in enumerate(positions):
            token = e.targets[i]
            if self.wrong_second and k == 6:
                token = (token + 1) % 128
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
    assert slots.slot_scores(_Oracle(examples), 5, 8, 3) == {"exact": 1.0, "slot 1": 1.0, "slot 2": 1.0}
    spoiled = slots.slot_scores(_Oracle(examples, wrong_second=True), 5, 8, 3)
    assert spoiled == {"exact": 0.0, "slot 1": 1.0, "slot 2": 0.0}
