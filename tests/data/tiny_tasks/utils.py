"""Tiny offline tasks for backend tests: data generated in code, deterministic."""

import random

import datasets


def _docs(n=12, seed=0):
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        word = "".join(rng.choice("abcdefgh") for _ in range(4))
        distractors = ["".join(rng.choice("abcdefgh") for _ in range(4)) for _ in range(2)]
        docs.append(
            {
                "context": f"Item {i}: {word}. Repeat: ",
                "target": word,
                "choices": [word, *distractors],
                "gold": 0,
            }
        )
    return docs


def load(**kwargs):
    return {"test": datasets.Dataset.from_list(_docs())}
