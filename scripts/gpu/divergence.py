"""Where two lm-eval runs' greedy generations part, and how close the choice was there.

    python3 scripts/gpu/divergence.py RUN_A RUN_B MODEL_DIR [--steer SPEC] [--dtype bfloat16] [--out FILE]

RUN_A and RUN_B are lm-eval output folders written with --log_samples (the same tasks and documents, for
example one process against a data-parallel launch). For every generation document whose responses differ,
the prompt and the two responses' common token prefix are fed to the model once, alone (batch 1, steered
with SPEC, on CUDA when there is one), and the logits at the first token where the responses part are read:
the two tokens the runs chose, their logits, and the gap between them, also in units of the bf16 spacing at
that logit's size (a gap of a few units is a near-tie that the rounding of a different batch shape can
flip). Prints one line per document and writes the records as JSON to FILE when given.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lm_eval_ssmsteer.report.documents import samples_in
from lm_eval_ssmsteer.steering import steer


def _generation(sample: dict) -> tuple[str, str] | None:
    """(prompt, response) of a generate_until sample; None for any other request type."""
    args = sample.get("arguments", {})
    first = next(iter(args.values()), None) if isinstance(args, dict) else None
    if not isinstance(first, dict) or not isinstance(first.get("arg_1"), dict):
        return None
    [[response]] = sample["resps"]
    return first["arg_0"], response


def bf16_spacing(x: float) -> float:
    """The distance between adjacent bfloat16 numbers at |x| (8 significant bits)."""
    if x == 0:
        return 2.0**-133
    return 2.0 ** (math.floor(math.log2(abs(x))) - 7)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("model", type=Path)
    p.add_argument("--steer", default=None, help="steering spec: preset name, JSON file or inline JSON")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()

    one, other = samples_in(a.run_a), samples_in(a.run_b)
    keys = sorted(k for k in one.keys() & other.keys() if one[k]["resps"] != other[k]["resps"])
    keys = [k for k in keys if _generation(one[k]) is not None]
    print(f"{len(keys)} generation documents differ")
    if not keys:
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype)).to(device).eval()
    records = []
    for task, doc in keys:
        prompt, resp_a = _generation(one[(task, doc)])
        _, resp_b = _generation(other[(task, doc)])
        ids_a = tok(resp_a, add_special_tokens=False).input_ids
        ids_b = tok(resp_b, add_special_tokens=False).input_ids
        common = 0
        while common < min(len(ids_a), len(ids_b)) and ids_a[common] == ids_b[common]:
            common += 1
        ids = tok(prompt, add_special_tokens=False).input_ids + ids_a[:common]
        with torch.no_grad(), steer(model, a.steer):
            logits = model(torch.tensor([ids], device=device)).logits[0, -1].float()
        record = {"task": task, "doc_id": doc, "prompt_tokens": len(ids) - common, "parted_at": common}
        chosen = {"a": ids_a[common] if common < len(ids_a) else None}
        chosen["b"] = ids_b[common] if common < len(ids_b) else None
        top2 = torch.topk(logits, 2)
        record["top2"] = [[tok.decode([i]), float(v)] for v, i in zip(top2.values, top2.indices, strict=True)]
        for side, token in chosen.items():
            record[f"token_{side}"] = None if token is None else [tok.decode([token]), float(logits[token])]
        if chosen["a"] is not None and chosen["b"] is not None:
            gap = abs(float(logits[chosen["a"]] - logits[chosen["b"]]))
            record["gap"] = gap
            record["gap_bf16_spacings"] = gap / bf16_spacing(float(top2.values[0]))
        records.append(record)
        print(json.dumps(record, ensure_ascii=False))
    if a.out is not None:
        a.out.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
