"""Trains the reference models (ref-mamba1 ships; ref-mamba2 did not learn yet) on the suite's TRAIN split.

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

TRAIN_MAX_LENGTH = 768
# knob -> (low, high), drawn uniformly per chunk of documents
TRAIN_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "ssm_copy": {"length": (4, 32)},
    "ssm_selective_copy": {"length": (8, 64), "num_tokens": (2, 8)},
    "ssm_mamba_selective_copy": {"length": (16, 256), "num_tokens": (2, 16)},
    "ssm_phonebook": {"num_entries": (3, 24)},
    "ssm_mqar": {"num_pairs": (2, 24), "num_queries": (1, 4)},
    "ssm_zoology_mqar": {"num_pairs": (2, 16), "length": (16, 128)},
    "ssm_kv_retrieval": {"num_pairs": (1, 16)},
    "ssm_induction": {"length": (4, 64)},
    # lower ends: the least length (prompt and generation budget) of the worst of 1,000 train documents
    # with the largest knobs, plus some haystack
    "ssm_passkey": {"length": (240, TRAIN_MAX_LENGTH)},
    "ssm_niah_single": {"length": (260, TRAIN_MAX_LENGTH)},
    "ssm_niah_multikey": {"length": (460, TRAIN_MAX_LENGTH), "num_needles": (1, 4)},
    "ssm_niah_multivalue": {"length": (500, TRAIN_MAX_LENGTH), "num_values": (1, 4)},
    "ssm_niah_multiquery": {"length": (500, TRAIN_MAX_LENGTH), "num_needles": (2, 4), "num_queries": (1, 2)},
    "ssm_variable_tracking": {"length": (480, TRAIN_MAX_LENGTH), "num_hops": (1, 4)},
    "ssm_ruler_niah_single": {"length": (440, TRAIN_MAX_LENGTH)},
    "ssm_ruler_niah_multikey": {"length": (480, TRAIN_MAX_LENGTH)},
}
# sampling weight of each task in the mix (harder tasks more often)
TASK_WEIGHTS = {
    "ssm_copy": 1.0,
    "ssm_selective_copy": 1.0,
    "ssm_mamba_selective_copy": 1.0,
    "ssm_phonebook": 1.5,
    "ssm_mqar": 1.5,
    "ssm_zoology_mqar": 1.5,
    "ssm_kv_retrieval": 1.5,
    "ssm_induction": 1.0,
    "ssm_passkey": 1.0,
    "ssm_niah_single": 1.0,
    "ssm_niah_multikey": 1.5,
    "ssm_niah_multivalue": 1.5,
    "ssm_niah_multiquery": 1.5,
    "ssm_variable_tracking": 1.5,
    "ssm_ruler_niah_single": 1.0,
    "ssm_ruler_niah_multikey": 1.5,
}
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
CHUNK = 16  # documents per (task, knob draw)
VOCAB_SIZE = 128  # the 99-token project vocabulary, rounded up


ARCHS = ("mamba", "mamba2", "stable_mamba")  # model types (mamba.arch)
# (hidden, layers) of the reference models; Mamba-2's heads (2 * hidden / 32) must be a multiple of 8
REF_SHAPES = {"mamba": (224, 6), "stable_mamba": (224, 6), "mamba2": (256, 5)}


def train_ranges(max_length: int = TRAIN_MAX_LENGTH) -> dict[str, dict[str, tuple[int, int]]]:
    """TRAIN_RANGES with long-context prompts of at most `max_length` characters; a long-context task whose
    shortest prompt is longer is left out of the mix."""
    ranges = {}
    for task, knobs in TRAIN_RANGES.items():
        if "length" in knobs and TASKS[task].long_context:
            low = knobs["length"][0]
            if low > max_length:
                continue
            knobs = {**knobs, "length": (low, max_length)}
        ranges[task] = knobs
    return ranges


def model_config(arch: str, hidden: int | None = None, layers: int | None = None):
    """The reference shapes (REF_SHAPES, about 2.1M parameters each) unless `hidden`/`layers` are given.
    Stable-Mamba is Mamba-1's shape with 2 Δ gates per channel (docs/stable_mamba.md)."""
    from transformers import Mamba2Config, MambaConfig

    if arch not in REF_SHAPES:
        raise ValueError(f"unknown architecture {arch!r}: one of {', '.join(ARCHS)}")
    hidden = REF_SHAPES[arch][0] if hidden is None else hidden
    layers = REF_SHAPES[arch][1] if layers is None else layers

    common = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 1,
        "tie_word_embeddings": True,
    }
    if arch == "mamba":
        return MambaConfig(state_size=16, expand=2, conv_kernel=4, **common)
    if arch == "stable_mamba":
        from lm_eval_ssmsteer.mamba.stable import StableMambaConfig

        return StableMambaConfig(state_size=16, expand=2, conv_kernel=4, num_timescales=2, **common)
    if arch == "mamba2":
        heads = 2 * hidden // 32
        # causal-conv1d's CUDA kernel reads x, B, C as a view of in_proj's output and needs its row stride
        # (2 * d_inner + 2 * state + heads) to be a multiple of 8, i.e. heads a multiple of 8
        if heads % 8:
            raise ValueError(
                f"hidden={hidden}: Mamba-2 needs 2 * hidden / 32 heads to be a multiple of 8 "
                f"(got {heads}) for causal-conv1d's kernel; use a hidden size that is a multiple of 128"
            )
        return Mamba2Config(
            state_size=64,
            expand=2,
            head_dim=32,
            num_heads=heads,
            n_groups=1,
            chunk_size=64,
            conv_kernel=4,
            **common,
        )
    raise ValueError(f"unknown architecture {arch!r}: one of {', '.join(ARCHS)}")


def _chunk(job: tuple[str, int, int, int]) -> list[tuple[str, str]]:
    task, chunk, seed, max_length = job
    rng = random.Random(f"train-mix/{task}/{seed}/{chunk}")
    knobs = {k: rng.randint(lo, hi) for k, (lo, hi) in train_ranges(max_length)[task].items()}
    if task == "ssm_niah_multiquery":
        knobs["num_queries"] = min(knobs["num_queries"], knobs["num_needles"])
    if task == "ssm_mqar":
        knobs["num_queries"] = min(knobs["num_queries"], knobs["num_pairs"])
    if task == "ssm_selective_copy":
        knobs["num_tokens"] = min(knobs["num_tokens"], knobs["length"])
    if task == "ssm_zoology_mqar":  # even, with as many query slots as pairs
        knobs["length"] = max(knobs["length"], 4 * knobs["num_pairs"]) // 2 * 2
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

    from lm_eval_ssmsteer.mamba.fastscan import fast_scan_refusal_for, use_fast_scan

    with ExitStack() as stack:
        # without the kernels, Mamba-1's torch loop is ~10x slower than the fast scan (values and grads equal)
        if fast_scan_refusal_for(arch, device) is None:
            stack.enter_context(use_fast_scan())
        elif device.startswith("cuda") and not _has_causal_conv1d():
            stack.enter_context(_unfused(arch))
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


def _has_causal_conv1d() -> bool:
    import importlib.util

    return importlib.util.find_spec("causal_conv1d") is not None


def _unfused(model_type: str):
    """mamba-ssm's fused training functions need causal-conv1d's kernel; without it, the mixers take
    their unfused path (torch conv, mamba-ssm's scan kernels) when the fused function returns None."""
    import importlib

    from lm_eval_ssmsteer.mamba.arch import ARCHITECTURES
    from lm_eval_ssmsteer.mamba.compat import SCAN_FUNCTIONS
    from lm_eval_ssmsteer.mamba.patch import returns_none, swapped

    arch = ARCHITECTURES[model_type]
    module = vars(importlib.import_module(arch.modeling_module))
    return swapped(module, {SCAN_FUNCTIONS[arch.family][2]: returns_none})


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
    from transformers import Mamba2ForCausalLM, MambaForCausalLM

    from lm_eval_ssmsteer.mamba.stable import StableMambaForCausalLM

    torch.manual_seed(seed)
    t0 = time.time()
    examples = encode(training_texts(n_docs, seed, workers, max_length))
    plan = batches(examples, tokens_per_batch, seed)
    print(
        f"[{arch}] {len(examples)} examples, {len(plan)} batches, data in {time.time() - t0:.0f}s", flush=True
    )
    model_class = {
        "mamba": MambaForCausalLM,
        "mamba2": Mamba2ForCausalLM,
        "stable_mamba": StableMambaForCausalLM,
    }[arch]
    if init is not None:  # continue training a saved model of the same architecture (its own shape)
        model = model_class.from_pretrained(str(init), dtype=torch.float32)
    else:
        model = model_class(model_config(arch, hidden, layers))
    # without the mamba-ssm kernels, Mamba-1 can train with mamba.py's parallel scan instead of the loop
    # over positions (it was slower on an H100 at 32k tokens per batch); the shipped config keeps the default
    model.config.use_mambapy = parallel_scan
    model = model.to(device)

    def decays(name: str, p) -> bool:
        # matrices decay; embeddings, norms, biases, D and Mamba-1's 2-D A_log (the timescales) do not
        return p.dim() >= 2 and "embed" not in name and "A_log" not in name

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    other = [p for n, p in model.named_parameters() if not decays(n, p)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
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
