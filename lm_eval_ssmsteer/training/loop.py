"""The training loop, in resumable stages.

A run lives in one folder:

- ``checkpoint/``: the model, the optimizer state and ``state.json`` (configuration, step, data position,
  schedule, the record of every stage). It is replaced in one step (a crash leaves the previous one).
- ``model/``: the trained model as a shippable folder (weights, tokenizer, ``training.json``), written at
  the end of every stage.
- ``log.jsonl``: one line per log interval and per monitor pass.

A stage ends at its step limit or wall-clock budget; ``resume`` continues from the checkpoint with the same
optimizer state, schedule position and data position, so stages 1+2 equal one uninterrupted run.

The schedule is warm-up then constant learning rate up to ``decay_start``, then a cosine decay to
``min_lr_ratio`` of the peak at ``steps`` (``decay_start=0``: cosine over the whole run). A stage may move
``steps`` and ``decay_start`` forward (warmup-stable-decay); the stage record says so.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from lm_eval_ssmsteer.files import atomic_write_text
from lm_eval_ssmsteer.taskdata import tokenizer as project_tokenizer
from lm_eval_ssmsteer.training import mix as mixing
from lm_eval_ssmsteer.training.models import ARCHS, model_class, model_config
from lm_eval_ssmsteer.training.monitor import measure, monitor_set, summary


@dataclass(frozen=True)
class TrainConfig:
    arch: str
    hidden: int | None = None
    layers: int | None = None
    seed: int = 0
    lr: float = 2e-3
    min_lr_ratio: float = 0.02
    warmup: int = 200
    steps: int = 20_000
    decay_start: int = 0
    tokens_per_step: int = 65_536
    micro_batches: int = 4
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    curriculum_steps: int = 0
    tasks: tuple[str, ...] = ()
    weights: dict[str, float] = field(default_factory=dict)
    balance: str = "docs"
    docs_per_epoch: int = 100_000
    max_length: int = mixing.TRAIN_MAX_LENGTH
    eval_every: int = 500
    eval_docs: int = 32
    init: str | None = None
    # loss weight of an answer word's first character (mixing.word_start_weights); 1: every target alike
    word_start_weight: float = 1.0
    # overrides of mixing.TRAIN_RANGES, {task: {knob: [low, high]}}, e.g. always two or more queried keys
    ranges: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r}: one of {', '.join(ARCHS)}")
        for name in ("steps", "tokens_per_step", "micro_batches", "docs_per_epoch", "warmup"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if not 0 <= self.decay_start <= self.steps:
            raise ValueError(f"decay_start={self.decay_start}: between 0 and steps={self.steps}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"lr={self.lr}, min_lr_ratio={self.min_lr_ratio}: lr > 0, ratio in [0, 1]")
        if self.curriculum_steps < 0 or self.eval_every < 0 or self.eval_docs < 0:
            raise ValueError("curriculum_steps, eval_every and eval_docs are >= 0")
        if not self.word_start_weight > 0:
            raise ValueError(f"word_start_weight={self.word_start_weight}: must be > 0")
        mixing.check_ranges(self.ranges)

    def mix(self) -> mixing.MixSpec:
        return mixing.default_mix(
            self.tasks or None,
            self.weights,
            self.docs_per_epoch,
            self.max_length,
            self.seed,
            self.balance,
            self.ranges,
        )


def learning_rate(config: TrainConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / config.warmup)
    if step < config.decay_start:
        return config.lr * warm
    span = max(1, config.steps - config.decay_start)
    progress = min(1.0, (step - config.decay_start) / span)
    ratio = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * warm * ratio


def has_causal_conv1d() -> bool:
    import importlib.util

    return importlib.util.find_spec("causal_conv1d") is not None


def unfused_mixers(model_type: str):
    """mamba-ssm's fused training functions need causal-conv1d's kernel; without it, the mixers take
    their unfused path (torch conv, mamba-ssm's scan kernels) when the fused function returns None."""
    import importlib

    from lm_eval_ssmsteer.mamba.arch import ARCHITECTURES
    from lm_eval_ssmsteer.mamba.compat import fused_scan_name
    from lm_eval_ssmsteer.mamba.patch import returns_none, swapped

    arch = ARCHITECTURES[model_type]
    module = vars(importlib.import_module(arch.modeling_module))
    fused = fused_scan_name(module, arch.family)
    return swapped(module, {fused: returns_none} if fused else {})


def kernel_path(stack: ExitStack, arch: str, device: str) -> str:
    """Enter the fastest training path for `arch` on `device`; returns its name (recorded per stage)."""
    from lm_eval_ssmsteer.mamba.fastscan import fast_scan_refusal_for, use_fast_scan

    if fast_scan_refusal_for(arch, device) is None:
        # without the kernels, Mamba-1's torch loop is ~10x slower than the fast scan, and Mamba-2's chunked
        # scan 2-14x (benchmarks/cpu_forward.py); values and grads equal
        stack.enter_context(use_fast_scan())
        return "project fast scan (torch)"
    if device.startswith("cuda") and not has_causal_conv1d():
        stack.enter_context(unfused_mixers(arch))
        return "mamba-ssm scan kernels, torch conv (no causal-conv1d)"
    if device.startswith("cuda"):
        return "mamba-ssm + causal-conv1d fused kernels"
    return "transformers torch path"


def _save_checkpoint(folder: Path, model, optimizer, state: dict) -> None:
    import torch

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp / "model"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def adamw(model, lr: float, weight_decay: float):
    """AdamW (0.9, 0.95) with weight decay on the matrices only (both training recipes)."""
    import torch

    def decays(name: str, p) -> bool:
        # matrices decay; embeddings, norms, biases, D and Mamba-1's 2-D A_log (the timescales) do not
        return p.dim() >= 2 and "embed" not in name and "A_log" not in name

    named = list(model.named_parameters())
    return torch.optim.AdamW(
        [
            {"params": [p for n, p in named if decays(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.95),
    )


def _optimizer(model, config: TrainConfig):
    return adamw(model, config.lr, config.weight_decay)


def _log(run: Path, record: dict) -> None:
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def export(run: Path, model, state: dict) -> Path:
    """The shippable model folder `run/model`: float32 weights, tokenizer, training.json."""
    folder = run / "model"
    tmp = run / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    project_tokenizer.save(tmp)
    info = {
        "arch": state["config"]["arch"],
        "parameters": state["parameters"],
        "train_split": "train",
        "config": state["config"],
        "train_ranges": mixing.mix_ranges(
            state["config"]["max_length"], state["config"].get("tasks"), state["config"].get("ranges")
        ),
        "steps_done": state["step"],
        "tokens_seen": state["tokens_seen"],
        "monitor_calibration": state.get("monitor"),
        "stages": state["stages"],
        "init_record": state.get("init_record"),
    }
    (tmp / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def train(
    run: Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overrides: dict | None = None,
    max_steps: int | None = None,
    time_budget: float | None = None,
    decay_in_budget: bool = False,
    device: str = "cuda",
    workers: int = 4,
    log_every: int = 50,
    command: str | None = None,
) -> dict:
    """One stage of a run: from scratch (`config`) or from `run`'s checkpoint (`resume`, with optional
    schedule `overrides`), until `max_steps` more steps, the `time_budget` in seconds or the schedule's end.
    `decay_in_budget`: this stage decays the learning rate, over the steps the last stage's speed fits in
    the budget. Returns the state written to the checkpoint."""
    import torch

    run = Path(run)
    ckpt = run / "checkpoint"
    if resume:
        if not (ckpt / "state.json").exists():
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt} (state.json missing)")
        state = json.loads((ckpt / "state.json").read_text())
        saved = state["config"]
        saved["tasks"] = tuple(saved["tasks"])
        config = replace(TrainConfig(**saved), **(overrides or {}))
    else:
        if config is None:
            raise ValueError("a new run needs a TrainConfig")
        if ckpt.exists():
            raise FileExistsError(f"{run} already holds a run; resume it or choose another folder")
        state = {"step": 0, "tokens_seen": 0, "position": None, "loss_avg": None, "stages": []}
        if config.init:  # the record of the model this run starts from (its training.json), when it has one
            parent = Path(config.init) / "training.json"
            state["init_record"] = json.loads(parent.read_text()) if parent.is_file() else None
    if decay_in_budget:
        if not time_budget or not state["stages"]:
            raise ValueError("--decay-in-budget needs --time-budget and an earlier stage's speed")
        rate = state["stages"][-1]["steps_per_second"]
        fit = int(rate * time_budget * 0.97)
        config = replace(config, decay_start=state["step"], steps=state["step"] + fit)
    run.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    cls = model_class(config.arch)
    if resume:
        model = cls.from_pretrained(str(ckpt / "model"), dtype=torch.float32)
    elif config.init:
        model = cls.from_pretrained(config.init, dtype=torch.float32)
    else:
        model = cls(model_config(config.arch, config.hidden, config.layers))
    model.config.use_mambapy = False
    model = model.to(device).train()
    optimizer = _optimizer(model, config)
    if resume:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True))

    mix = config.mix()
    micro_tokens = max(1, config.tokens_per_step // config.micro_batches)

    def stream_at(step: int) -> str:
        return "easy" if step < config.curriculum_steps else "full"

    position = state["position"] or {"stream": stream_at(state["step"]), "epoch": 0, "index": 0}
    streams = {name: mixing.Stream(mix, name, micro_tokens, workers) for name in ("easy", "full")}
    streams[position["stream"]].epoch = position["epoch"]
    streams[position["stream"]].index = position["index"]
    iters = {name: iter(s) for name, s in streams.items()}
    watched = monitor_set(mix.tasks, config.eval_docs, seed=config.seed) if config.eval_docs else {}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else None
    weighted = config.word_start_weight != 1.0  # 1: the unweighted objective, computed as it always was

    with ExitStack() as stack:
        path = kernel_path(stack, config.arch, device)
        step0, tokens0, t0 = state["step"], state["tokens_seen"], time.time()
        step, loss_avg, tokens_seen = state["step"], state["loss_avg"], state["tokens_seen"]
        stop = "schedule end"
        print(f"[{config.arch}] {run.name}: step {step} of {config.steps}, {path}, {device}", flush=True)
        while step < config.steps:
            if max_steps is not None and step - step0 >= max_steps:
                stop = "max_steps"
                break
            if time_budget is not None and time.time() - t0 > time_budget:
                stop = "time budget"
                break
            micro = [next(iters[stream_at(step)]) for _ in range(config.micro_batches)]
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            tensors = [mixing.collate(b, device) for b in micro]
            if weighted:
                weights = [mixing.word_start_weights(i, t, config.word_start_weight) for i, t in tensors]
                n_targets = float(sum(w.sum() for w in weights))
            else:
                n_targets = sum(int((t != -100).sum()) for _, t in tensors)
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for m, (ids, targets) in enumerate(tensors):
                with autocast if autocast is not None else ExitStack():
                    logits = model(ids).logits
                flat = logits.float().flatten(0, 1), targets.flatten()
                if weighted:  # a weighted mean over the step's targets
                    per_token = torch.nn.functional.cross_entropy(*flat, ignore_index=-100, reduction="none")
                    loss = (per_token * weights[m].flatten()).sum() / n_targets
                else:
                    loss = (
                        torch.nn.functional.cross_entropy(*flat, ignore_index=-100, reduction="sum")
                        / n_targets
                    )
                loss.backward()
                step_loss += loss.item()
                tokens_seen += ids.numel()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            loss_avg = step_loss if loss_avg is None else 0.98 * loss_avg + 0.02 * step_loss
            if step % log_every == 0 or step == step0 + 1:
                elapsed = time.time() - t0
                record = {
                    "step": step,
                    "loss": round(loss_avg, 5),
                    "lr": lr,
                    "seconds": round(elapsed, 1),
                    "tokens_per_second": round((tokens_seen - tokens0) / max(elapsed, 1e-9)),
                }
                _log(run, record)
                print(
                    f"[{config.arch}] {run.name} step {step} loss {loss_avg:.4f} lr {lr:.2e} "
                    f"{record['tokens_per_second']} tok/s {elapsed:.0f}s",
                    flush=True,
                )
            if watched and config.eval_every and step % config.eval_every == 0:
                scores = measure(model, watched, device)
                _log(run, {"step": step, "monitor": scores})
                print(f"[{config.arch}] {run.name} step {step} monitor {summary(scores)}", flush=True)
        elapsed = time.time() - t0
        scores = measure(model, watched, device) if watched else None
        if scores:
            _log(run, {"step": step, "monitor": scores})
            print(f"[{config.arch}] {run.name} step {step} monitor {summary(scores)}", flush=True)

    stage = {
        "steps": [step0, step],
        "stopped_by": stop,
        "seconds": round(elapsed, 1),
        "steps_per_second": round((step - step0) / max(elapsed, 1e-9), 3),
        "tokens_per_second": round((tokens_seen - tokens0) / max(elapsed, 1e-9)),
        "tokens": tokens_seen - tokens0,
        "lr_schedule": {"lr": config.lr, "steps": config.steps, "decay_start": config.decay_start},
        "overrides": overrides or {},
        "path": path,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "command": command,
        "monitor_calibration": scores,
    }
    cfg = asdict(config)
    cfg["tasks"] = list(mix.tasks)
    state = {
        "config": cfg,
        "step": step,
        "tokens_seen": tokens_seen,
        "position": streams[stream_at(step)].position,
        "loss_avg": loss_avg,
        "parameters": model.num_parameters(),
        "init_record": state.get("init_record"),
        "monitor": scores,
        "stages": [*state["stages"], stage],
    }
    model.eval()
    _save_checkpoint(ckpt, model, optimizer, state)
    export(run, model.to("cpu").float(), state)
    atomic_write_text(run / "state.json", json.dumps(state, indent=1) + "\n")
    return state
