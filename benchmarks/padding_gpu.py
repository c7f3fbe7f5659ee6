"""Left padding on the GPU kernel path: does a prompt's last-position logits depend on its batch mates?

    python benchmarks/padding_gpu.py --model DIR [--model DIR ...] [--length 8192] [--prompts 8]
        [--pads 1,8] [--dtypes float32,bfloat16] [--steer paper-mamba-130m] [--out results.json]

lm-eval batches generation requests left-padded to the longest prompt of the batch, so a document's
padding, and the shape of the batch it is computed in, depend on which documents it is batched with (a
data-parallel shard or another batch size changes both). For each model and dtype, unsteered and steered
(``--steer``, where it fits the model), it computes ``--prompts`` random-token prompts of lengths
``length``, ``length - 1``, ... each alone (batch 1, no padding) and compares their last-position logits
with (a) the same prompt alone behind k pad tokens masked out (each k of ``--pads``) and (b) all prompts in
one left-padded batch. Printed per row: the largest |logit difference|, the same relative to the logits'
standard deviation, and how many prompts keep their argmax. In exact arithmetic padding is neutral (masked
positions leave the state at zero), so a float32 difference at rounding level with a bf16 difference far
above it says the rounding of a different shape is what moves, amplified by the model; a float32
difference well above rounding would be a masking fault.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from lm_eval_ssmsteer.spec import SpecError, load_spec
from lm_eval_ssmsteer.steering import SteeringPlan, steer


def _last_logits(model, ids: torch.Tensor, mask: torch.Tensor, plan) -> torch.Tensor:
    with torch.no_grad(), steer(model, plan):
        return model(input_ids=ids, attention_mask=mask).logits[:, -1].float()


def _left_pad(
    prompts: list[list[int]], width: int, pad: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def _row(name: str, alone: torch.Tensor, other: torch.Tensor) -> dict:
    diff = (alone - other).abs().amax(dim=-1)
    scale = alone.std(dim=-1)
    return {
        "case": name,
        "max_abs_logit_difference": float(diff.max()),
        "max_relative_to_logit_std": float((diff / scale).max()),
        "argmax_kept": int((alone.argmax(-1) == other.argmax(-1)).sum()),
        "prompts": alone.shape[0],
    }


def measure(model_dir: str, dtype: str, spec_ref: str | None, a: argparse.Namespace) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    vocab = model.config.vocab_size
    pad = model.config.pad_token_id or 0
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, vocab, (a.length - i,), generator=gen).tolist() for i in range(a.prompts)]
    plans: list[tuple[str, object]] = [("unsteered", None)]
    if spec_ref:
        try:
            plans.append((spec_ref, SteeringPlan.build(model, load_spec(spec_ref))))
        except SpecError as exc:
            print(f"{model_dir}: steering {spec_ref!r} skipped: {exc}", file=sys.stderr)
    rows = []
    for steering, plan in plans:
        alone = torch.cat([_last_logits(model, *_left_pad([p], len(p), pad, device), plan) for p in prompts])
        cases = []
        for k in a.pads:
            padded = [_last_logits(model, *_left_pad([p], len(p) + k, pad, device), plan) for p in prompts]
            cases.append((f"alone behind {k} pad", torch.cat(padded)))
        cases.append(
            (
                f"batch of {len(prompts)}",
                _last_logits(model, *_left_pad(prompts, a.length, pad, device), plan),
            )
        )
        for name, other in cases:
            row = {"model": model_dir, "dtype": dtype, "steering": steering, **_row(name, alone, other)}
            rows.append(row)
            print(
                f"| {Path(model_dir).name} | {dtype} | {steering} | {name} "
                f"| {row['max_abs_logit_difference']:.3g} | {row['max_relative_to_logit_std']:.3g} "
                f"| {row['argmax_kept']}/{row['prompts']} |",
                flush=True,
            )
    del model
    torch.cuda.empty_cache()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--pads", default="1,8", help="comma-separated pad counts")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--steer", default="paper-mamba-130m", help="a spec or preset; '' for unsteered only")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    a.pads = [int(k) for k in a.pads.split(",") if k]
    if a.prompts < 1 or a.length <= a.prompts or any(k < 1 for k in a.pads):
        p.error(
            f"--prompts {a.prompts}, --length {a.length}, --pads {a.pads}: "
            "need 1 <= prompts < length and pads >= 1"
        )
    print(
        "| model | dtype | steering | against the prompt alone | max abs logit difference "
        "| relative to logit std | argmax kept |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = []
    for model_dir in a.model:
        for dtype in a.dtypes.split(","):
            rows += measure(model_dir, dtype, a.steer or None, a)
    if a.out is not None:
        a.out.write_text(json.dumps({"length": a.length, "pads": a.pads, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
