"""Held-out TEST scores of the reference models: unsteered, the spec `ssmsteer find` writes, a control
with as many random channels (same layer, site and scale), and the paper-style heuristic (layer from the
Δ-bias statistics, its 16 highest-variance mixer_out channels, ×5). Prints the Markdown table of
docs/finder.md and writes the specs and raw scores under --out-dir.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/find_table.py --samples 20

`--plant LAYER` damps 8 channels of that layer's out_proj rows by 0.2 first (the planted-bottleneck
validation through lm-eval) and adds the undamped model's row. The finder sees only the CALIBRATION split;
every score in the table comes from the TEST split through `lm_eval --model mamba-steered`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["ssm_copy", "ssm_selective_copy", "ssm_phonebook", "ssm_mqar", "ssm_kv_retrieval", "ssm_induction"]
PLANTED_CHANNELS = 8
PLANTED_SCALE = 0.2


def lm_eval_scores(path: str, spec: Path | None, samples: int, batch_size: int) -> dict[str, float]:
    """exact_match per task on the TEST split (the suite's lm-eval tasks), through mamba-steered."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model_args = {"pretrained": path, "dtype": "float32"}
    if json.loads((Path(path) / "config.json").read_text())["model_type"] in ("mamba", "falcon_mamba"):
        model_args["fast_scan"] = True
    if spec is not None:
        model_args["steer"] = str(spec)
    manager = TaskManager(
        include_path=str(ROOT / "tasks"), include_defaults=False, metadata={"num_samples": samples}
    )
    out = simple_evaluate(
        model="mamba-steered",
        model_args=model_args,
        tasks=TASKS,
        task_manager=manager,
        device="cpu",
        batch_size=batch_size,
    )
    return {task: out["results"][task]["exact_match,none"] for task in TASKS}


def paper_heuristic_spec(model, data, out: Path) -> Path:
    """The authors' recipe: Δ-bias layer, top-16 variance channels of its mixer output, scale 5."""
    from lm_eval_ssmsteer.finder import methods
    from lm_eval_ssmsteer.sites import describe_model
    from lm_eval_ssmsteer.spec import SteeringSpec

    arch = describe_model(model)
    layer = methods.dt_bias_layer(methods.dt_bias_layers(model, arch))
    variance = methods.activation_variance(model, data.batches(), [(layer, "mixer_out")])[
        (layer, "mixer_out")
    ]
    channels = sorted(variance.argsort(descending=True)[:16].tolist())
    spec = SteeringSpec.single(
        layer, "mixer_out", channels, 5.0, provenance={"source": "paper-style heuristic"}
    )
    spec.save(out)
    return out


def random_control_spec(found: Path, width: int, out: Path, seed: int = 0) -> Path:
    from lm_eval_ssmsteer.spec import SteeringSpec, load_spec

    iv = load_spec(str(found)).interventions[0]
    k = len(iv.channels) if isinstance(iv.channels, tuple) else width
    channels = sorted(random.Random(seed).sample(range(width), k))
    layer = iv.layers[0]
    SteeringSpec.single(
        layer, iv.site, channels, iv.scale, provenance={"source": f"random control, seed {seed}"}
    ).save(out)
    return out


def plant(path: str, layer: int, folder: Path, seed: int = 0) -> tuple[str, list[int]]:
    """A copy of the model with PLANTED_CHANNELS mixer_out channels of `layer` damped by PLANTED_SCALE."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    channels = sorted(random.Random(seed).sample(range(model.config.hidden_size), PLANTED_CHANNELS))
    with torch.no_grad():
        model.base_model.layers[layer].mixer.out_proj.weight[channels] *= PLANTED_SCALE
    model.save_pretrained(folder)
    for name in Path(path).iterdir():
        if name.name.startswith("tokenizer") or name.name == "special_tokens_map.json":
            shutil.copy(name, folder / name.name)
    return str(folder), channels


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ref-mamba1", "ref-mamba2"])
    p.add_argument("--samples", type=int, default=20, help="TEST documents per task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--method", default="causal")
    p.add_argument("--plant", type=int, default=None, metavar="LAYER", help="damp 8 channels of LAYER first")
    p.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "results" / "finder")
    a = p.parse_args()

    from lm_eval_ssmsteer.finder import cli as find_cli
    from lm_eval_ssmsteer.finder.data import DEFAULT_DOCS_PER_TASK, DEFAULT_TASKS
    from lm_eval_ssmsteer.loading import resolve_model_path
    from lm_eval_ssmsteer.spec import SITES

    a.out_dir.mkdir(parents=True, exist_ok=True)
    rows, raw = [], {}
    for name in a.models:
        path = resolve_model_path(name)
        tmp = Path(tempfile.mkdtemp())
        tag = Path(name).name
        planted = None
        if a.plant is not None:
            original = path
            path, planted = plant(path, a.plant, tmp, seed=0)
            tag = f"{Path(name).name}-planted-L{a.plant}"
        found = a.out_dir / f"{tag}.found.json"
        args = argparse.Namespace(
            model=path,
            out=found,
            tasks=list(DEFAULT_TASKS),
            data=None,
            docs_per_task=DEFAULT_DOCS_PER_TASK,
            sites=list(SITES),
            method=a.method,
            candidates=2,
            verify=4,
            max_channels=32,
            device="cpu",
            no_progress=True,
        )
        t0 = time.time()
        _, result = find_cli.run(args)
        find_seconds = time.time() - t0
        from lm_eval_ssmsteer.finder.data import encode_pairs, task_pairs
        from lm_eval_ssmsteer.loading import load_model
        from lm_eval_ssmsteer.sites import describe_model

        model, tokenizer = load_model(path)
        data = encode_pairs(
            tokenizer, task_pairs(list(DEFAULT_TASKS), "calibration", DEFAULT_DOCS_PER_TASK), "cal"
        )
        iv = result.spec.interventions[0]
        width = describe_model(model).site_width(iv.site)
        specs = {
            "unsteered": None,
            "found": found,
            "random channels": random_control_spec(found, width, a.out_dir / f"{tag}.random.json"),
            "paper heuristic": paper_heuristic_spec(model, data, a.out_dir / f"{tag}.paper.json"),
        }
        scores = {label: lm_eval_scores(path, spec, a.samples, a.batch_size) for label, spec in specs.items()}
        if planted is not None:
            scores = {"undamped": lm_eval_scores(original, None, a.samples, a.batch_size), **scores}
        shutil.rmtree(tmp, ignore_errors=True)
        chosen = result.scores["chosen"]
        raw[tag] = {
            "scores": scores,
            "find_seconds": round(find_seconds, 1),
            "chosen": chosen,
            "planted_channels": planted,
            "found_channels": list(iv.channels) if isinstance(iv.channels, tuple) else iv.channels,
            "calibration_gain": result.spec.provenance["calibration_gain"],
        }
        for label, per_task in scores.items():
            mean = sum(per_task.values()) / len(per_task)
            rows.append(
                f"| {tag} | {label} | " + " | ".join(f"{per_task[t]:.2f}" for t in TASKS) + f" | {mean:.3f} |"
            )
        print(f"{tag}: find {find_seconds:.0f}s, chosen {chosen}", flush=True)
    header = "| model | steering | " + " | ".join(t.removeprefix("ssm_") for t in TASKS) + " | mean |"
    print("\n".join([header, "|" + "---|" * (len(TASKS) + 3), *rows]))
    name = "planted" if a.plant is not None else "table"
    (a.out_dir / f"{name}.json").write_text(json.dumps(raw, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
