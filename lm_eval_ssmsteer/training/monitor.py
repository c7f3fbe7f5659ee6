"""Per-task answer accuracy during training: teacher-forced, on the CALIBRATION split at the tasks'
default knobs (the test split stays for lm-eval). Per-token accuracy tells a skill that is close (0.9 of
the characters right) from one that is absent (chance), where exact match reads 0 for both."""

from __future__ import annotations

from collections.abc import Sequence

from lm_eval_ssmsteer.taskdata import generate, prompts
from lm_eval_ssmsteer.training.auxiliary import AUX_RANGES
from lm_eval_ssmsteer.training.mix import Example, collate, encode, sequences

# knobs of the monitored setting where a task's default is out of the training ranges
MONITOR_KNOBS = {"ssm_mamba_selective_copy": {"length": 256}}


def monitor_set(tasks: Sequence[str], n: int, seed: int = 0) -> dict[str, list[Example]]:
    out = {}
    for task in tasks:
        if task in AUX_RANGES:  # a training-only task has no calibration split and is not scored
            continue
        docs = generate(task, "calibration", n, seed=seed, **MONITOR_KNOBS.get(task, {}))
        texts = [(task, text, spans) for d in docs for text, spans in sequences(prompts(d))]
        out[task] = encode(texts)
    return out


def measure(model, sets: dict[str, list[Example]], device, batch_size: int = 32) -> dict[str, dict]:
    """{task: {"token": share of answer tokens right, "exact": share of sequences with all right}}."""
    import torch

    scores = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for task, examples in sets.items():
            right = total = exact = 0
            for b in range(0, len(examples), batch_size):
                ids, targets = collate(examples[b : b + batch_size], device)
                logits = model(ids).logits.float()
                hit = (logits.argmax(-1) == targets) & (targets != -100)
                counted = targets != -100
                right += int(hit.sum())
                total += int(counted.sum())
                exact += int((hit == counted).all(dim=1).sum())
            scores[task] = {
                "token": round(right / max(total, 1), 4),
                "exact": round(exact / len(examples), 4),
            }
    model.train(was_training)
    return scores


def summary(scores: dict[str, dict]) -> str:
    """One line: task exact/token, shortened names."""
    return " ".join(f"{t.removeprefix('ssm_')}={s['exact']:.2f}/{s['token']:.2f}" for t, s in scores.items())
