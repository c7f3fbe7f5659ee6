"""The first training recipe (suite v1): ref-mamba1 v1 and the Stable-Mamba comparison of docs/stable_mamba.md
(`ssmsteer study stable-train`) were trained with it; kept so that those runs reproduce. New runs use
training/loop.py. It trains on the suite's TRAIN split.

The mix covers every task with difficulty knobs drawn from TRAIN_RANGES (long-context prompts of at most
TRAIN_MAX_LENGTH characters), so the default test settings are in distribution and longer lengths are
not. Loss falls on the answers only (`context + " " + answer + "\\n"`). Seeds fix the data and the
initialisation; a wall-clock budget may end training before `steps` (training.json records it).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from lm_eval_ssmsteer.taskdata import TASKS, generate, prompts
from lm_eval_ssmsteer.taskdata import tokenizer as project_tokenizer
from lm_eval_ssmsteer.training.loop import adamw, kernel_path
from lm_eval_ssmsteer.training.mix import CHUNK, TASK_WEIGHTS, TRAIN_MAX_LENGTH, draw_knobs, train_ranges
from lm_eval_ssmsteer.training.models import ARCHS, model_class, model_config

# evaluation inside the script (teacher-forced exact answers): default knobs, then a harder setting
EVAL_SETTINGS = {
    "ssm_copy": [{}, {"length": 48}],
    "ssm_selective_copy": [{}, {"length": 96, "num_tokens": 12}],
    "ssm_mamba_selective_copy": [{"length": 256}, {}],
    "ssm_phonebook": [{}, {"num_entries": 48}],
    "ssm_mqar": [{}, {"num_pairs": 48}],
    "ssm_zoology_mqar": [{}, {"num_pairs": 24, "length": 256}],
    "ssm_kv_retrieval": [{}, {"num_pairs": 32}],
    "ssm_induction": [{}, {"length": 128}],
    **{t: [{"length": 512}, {"length": 1024}, {"length": 2048}] for t in TASKS if TASKS[t].long_context},
}


def _chunk(job: tuple[str, int, int, int]) -> list[tuple[str, str]]:
    task, chunk, seed, max_length = job
    rng = random.Random(f"train-mix/{task}/{seed}/{chunk}")
    knobs = draw_knobs(task, rng, train_ranges(max_length))
    docs = generate(task, "train", CHUNK, seed=seed * 1_000_003 + chunk, **knobs)
    return [pair for d in docs for pair in prompts(d)]


def training_texts(
    n_docs: int, seed: int, workers: int, max_length: int = TRAIN_MAX_LENGTH
) -> list[tuple[str, str]]:
    """About `n_docs` (context, answer) pairs of the TRAIN split, mixed by TASK_WEIGHTS, in a seeded order."""
    weights = {t: w for t, w in TASK_WEIGHTS.items() if t in train_ranges(max_length)}
    total = sum(weights.values())
    jobs = [
        (t, c, seed, max_length)
        for t, w in weights.items()
        for c in range(math.ceil(n_docs * w / total / CHUNK))
    ]
    with ProcessPoolExecutor(workers) as pool:
        pairs = [p for chunk in pool.map(_chunk, jobs, chunksize=8) for p in chunk]
    random.Random(seed).shuffle(pairs)
    return pairs


def encode(pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """Token ids of `context + " " + answer + "\\n"` and the index of the first answer token."""
    tok = project_tokenizer.build_tokenizer()
    texts = [f"{c} {a}\n" for c, a in pairs]
    encoded = tok.encode_batch(texts, add_special_tokens=False)
    return [(e.ids, len(c)) for e, (c, _) in zip(encoded, pairs, strict=True)]


def batches(examples: list[tuple[list[int], int]], tokens_per_batch: int, seed: int) -> list[list[int]]:
    """Index batches of similar lengths (little padding), in a seeded random order."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    out, current, longest = [], [], 0
    for i in order:
        longest_next = max(longest, len(examples[i][0]))
        if current and longest_next * (len(current) + 1) > tokens_per_batch:
            out.append(current)
            current, longest_next = [], len(examples[i][0])
        current.append(i)
        longest = longest_next
    if current:
        out.append(current)
    random.Random(seed).shuffle(out)
    return out


def collate(examples, batch, device):
    import torch

    width = max(len(examples[i][0]) for i in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, i in enumerate(batch):
        seq, start = examples[i]
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, start : len(seq)] = torch.tensor(seq[start:])
    return ids.to(device), labels.to(device)


def answer_accuracy(model, pairs: list[tuple[str, str]], device, batch_size: int = 32) -> float:
    """Share of documents whose whole answer (teacher-forced, greedy per token) is right."""
    import torch

    examples = encode(pairs)
    right = 0
    with torch.no_grad():
        for b in range(0, len(examples), batch_size):
            batch = list(range(b, min(b + batch_size, len(examples))))
            ids, labels = collate(examples, batch, device)
            logits = model(ids).logits[:, :-1].float()
            target = labels[:, 1:]
            ok = (logits.argmax(-1) == target) | (target == -100)
            right += int(ok.all(dim=1).sum())
    return right / len(examples)


def evaluate(model, device, n: int) -> dict[str, dict[str, float]]:
    scores: dict[str, dict[str, float]] = {}
    for task, settings in EVAL_SETTINGS.items():
        for knobs in settings:
            docs = generate(task, "test", n, seed=0, **knobs)
            label = ",".join(f"{k}={v}" for k, v in knobs.items()) or "default"
            scores.setdefault(task, {})[label] = answer_accuracy(
                model, [pair for d in docs for pair in prompts(d)], device
            )
    return scores


def train(
    arch: str,
    out: Path,
    steps: int,
    tokens_per_batch: int,
    lr: float,
    seed: int,
    n_docs: int,
    workers: int,
    time_budget: float | None,
    device: str,
    eval_docs: int = 64,
    parallel_scan: bool = False,
    hidden: int | None = None,
    layers: int | None = None,
    max_length: int = TRAIN_MAX_LENGTH,
    init: Path | None = None,
) -> dict:
    from contextlib import ExitStack

    with ExitStack() as stack:
        kernel_path(stack, arch, device)
        return _train(
            arch,
            out,
            steps,
            tokens_per_batch,
            lr,
            seed,
            n_docs,
            workers,
            time_budget,
            device,
            eval_docs,
            parallel_scan,
            hidden,
            layers,
            max_length,
            init,
        )


def _train(
    arch,
    out,
    steps,
    tokens_per_batch,
    lr,
    seed,
    n_docs,
    workers,
    time_budget,
    device,
    eval_docs,
    parallel_scan,
    hidden,
    layers,
    max_length,
    init,
) -> dict:
    import torch

    torch.manual_seed(seed)
    t0 = time.time()
    examples = encode(training_texts(n_docs, seed, workers, max_length))
    plan = batches(examples, tokens_per_batch, seed)
    print(
        f"[{arch}] {len(examples)} examples, {len(plan)} batches, data in {time.time() - t0:.0f}s", flush=True
    )
    cls = model_class(arch)
    if init is not None:  # continue training a saved model of the same architecture (its own shape)
        model = cls.from_pretrained(str(init), dtype=torch.float32)
    else:
        model = cls(model_config(arch, hidden, layers))
    # without the mamba-ssm kernels, Mamba-1 can train with mamba.py's parallel scan instead of the loop
    # over positions (it was slower on an H100 at 32k tokens per batch); the shipped config keeps the default
    model.config.use_mambapy = parallel_scan
    model = model.to(device)

    opt = adamw(model, lr, 0.1)
    warmup = min(200, max(1, steps // 50))  # a time budget may end training long before `steps`
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else None
    start, step, loss_avg = time.time(), 0, None
    while step < steps:
        batch = plan[step % len(plan)]
        elapsed = time.time() - start
        if time_budget and elapsed > time_budget:
            print(f"[{arch}] time budget {time_budget}s reached at step {step}", flush=True)
            break
        progress = max(step / steps, elapsed / time_budget if time_budget else 0.0)
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        ids, labels = collate(examples, batch, device)
        if autocast is not None:
            with autocast:
                loss = model(ids, labels=labels).loss
        else:
            loss = model(ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        if step % 50 == 0 or step == 1:
            print(
                f"[{arch}] step {step} loss {loss_avg:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
    model.eval()
    model.config.use_mambapy = False
    scores = evaluate(model, device, eval_docs) if eval_docs else {}
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").float().save_pretrained(str(out))
    project_tokenizer.save(out)
    info = {
        "arch": arch,
        "steps_done": step,
        "steps_planned": steps,
        "tokens_per_batch": tokens_per_batch,
        "lr": lr,
        "seed": seed,
        "train_docs": len(examples),
        "train_split": "train",
        "train_ranges": train_ranges(max_length),
        "train_max_length": max_length,
        "init_from": str(init) if init is not None else None,
        "parameters": model.num_parameters(),
        "train_seconds": round(time.time() - start, 1),
        "final_loss": loss_avg,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "teacher_forced_answer_accuracy": scores,
    }
    (out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps({arch: scores}, indent=1), flush=True)
    return info


def main(argv: list[str] | None = None, description: str = __doc__) -> int:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=ARCHS, required=True)
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--tokens-per-batch", type=int, default=32768)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--docs", type=int, default=300_000, help="training documents generated up front")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training before stopping")
    p.add_argument("--device", default="cuda")
    p.add_argument("--parallel-scan", action="store_true", help="Mamba-1 without kernels: mamba.py pscan")
    p.add_argument(
        "--hidden", type=int, default=None, help="hidden size (default: REF_SHAPES; Mamba-2: x128)"
    )
    p.add_argument("--layers", type=int, default=None, help="layers (default: REF_SHAPES)")
    p.add_argument(
        "--eval-docs", type=int, default=64, help="test documents per setting in the final check (0: none)"
    )
    p.add_argument(
        "--max-length", type=int, default=TRAIN_MAX_LENGTH, help="longest long-context training prompt"
    )
    p.add_argument("--init", type=Path, default=None, help="continue training this saved model folder")
    a = p.parse_args(argv)
    train(
        a.arch,
        a.out,
        a.steps,
        a.tokens_per_batch,
        a.lr,
        a.seed,
        a.docs,
        a.workers,
        a.time_budget,
        a.device,
        a.eval_docs,
        a.parallel_scan,
        a.hidden,
        a.layers,
        a.max_length,
        a.init,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
