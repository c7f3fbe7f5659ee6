"""Planted bottlenecks in bulk: for every (layer, site, seed) given, damp random channels of a shipped model
in its weights, run `find` on the CALIBRATION split and score the found spec on TEST documents.

Per plant it records: the damage on the test documents (teacher-forced answer loss and whole-answer
accuracy, `finder.methods.evaluate`), what `find` chose (layer, site, channels), whether it names the
planted layer and site (on Mamba-1, B/C and ssm_out/gate are the same intervention and count as one
site), the share of planted channels in the spec, the test win-back of the found spec
((damped - steered) / (damped - intact) of the loss; of the accuracy where the plant cost any), and the same
for a control with as many random channels at the found layer, site and scale. The plants are chosen by
the arguments only (random channels, seeded), never by a finder output, and every plant is reported.
Lm-eval's generation metrics for a plant are `scripts/find_table.py --plant ...` (slower, CPU or GPU).

    python scripts/plant_study.py --layers 1 2 3 4 --plants B:4 mixer_out:16 ssm_out:32 --seeds 10 \\
        --docs-per-task 2 8 --screen 3 100 --device cuda --out plant_study.json

Writes --out after every plant (atomically), so an interrupted run keeps what it measured; prints a
Markdown table at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
TWINS = {"B": "C", "C": "B", "ssm_out": "gate", "gate": "ssm_out"}


def parse_plant(text: str) -> tuple[str, int]:
    site, _, count = text.partition(":")
    if site not in ("mixer_out", "ssm_out", "B", "C") or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(
            f"--plants: {text!r}; allowed: SITE:COUNT, SITE one of mixer_out, ssm_out, B, C, COUNT >= 1"
        )
    return site, int(count)


def fraction(damped: float, intact: float, steered: float) -> float | None:
    """Share of the damage undone: (damped - steered) / (damped - intact); None when there was none."""
    gap = damped - intact
    return None if abs(gap) < 1e-9 else (damped - steered) / gap


def main(argv: list[str] | None = None) -> dict:
    from lm_eval_ssmsteer.finder.data import DEFAULT_LENGTH, DEFAULT_TASKS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ref-mamba1")
    p.add_argument("--layers", nargs="+", type=int, required=True)
    p.add_argument("--plants", nargs="+", type=parse_plant, default=[("B", 4)], help="SITE:COUNT ...")
    p.add_argument("--scale", type=float, default=0.1, help="the damping factor (default 0.1)")
    p.add_argument("--seeds", nargs="+", type=int, default=[10])
    p.add_argument("--docs-per-task", nargs="+", type=int, default=[2], help="calibration sizes to run")
    p.add_argument(
        "--screen", nargs="+", type=int, default=[3], help="find's --screen values to run (pairs screened)"
    )
    p.add_argument("--test-docs", type=int, default=8, help="TEST documents per task")
    p.add_argument("--length", type=int, default=DEFAULT_LENGTH)
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-validation", action="store_true", help="find without validation documents")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)

    from find_table import damp_weights

    from lm_eval_ssmsteer.finder import find
    from lm_eval_ssmsteer.finder.data import encode_pairs, task_pairs, token_counter, validation_pairs
    from lm_eval_ssmsteer.finder.methods import evaluate
    from lm_eval_ssmsteer.loading import load_model, resolve_model_path
    from lm_eval_ssmsteer.mamba.arch import describe_model
    from lm_eval_ssmsteer.mamba.fastscan import fast_scan_if_allowed
    from lm_eval_ssmsteer.spec import SteeringSpec

    path = resolve_model_path(a.model)
    model, tokenizer = load_model(path, device=a.device)
    arch = describe_model(model)
    count = token_counter(tokenizer)

    def pairs(split: str, docs: int) -> list[tuple[str, str]]:
        return task_pairs(a.tasks, split, docs, length=a.length, count_tokens=count)

    def on_device(data):
        return [(i.to(a.device), t.to(a.device)) for i, t in data.batches()]

    test = on_device(encode_pairs(tokenizer, pairs("test", a.test_docs), "test split"))
    calibration, validation = {}, {}
    for docs in a.docs_per_task:
        drawn = pairs("calibration", docs)
        calibration[docs] = encode_pairs(tokenizer, drawn, "calibration split")
        if not a.no_validation:  # the documents `ssmsteer find` validates on by default
            held = validation_pairs(a.tasks, drawn, docs, length=a.length, count_tokens=count)
            validation[docs] = encode_pairs(tokenizer, held, "calibration split (validation)")
    with fast_scan_if_allowed(model):
        intact = evaluate(model, test)
    doc: dict = {
        "model": a.model,
        "model_fingerprint": arch.fingerprint(),
        "device": a.device,
        "scale": a.scale,
        "tasks": a.tasks,
        "length": a.length,
        "test_docs": sum(ids.shape[0] for ids, _ in test),
        "intact_test": {"loss": intact.loss, "accuracy": intact.accuracy},
        "plants": [],
    }
    from tqdm.auto import tqdm

    todo = [(layer, site, n, seed) for layer in a.layers for site, n in a.plants for seed in a.seeds]
    for layer, site, n, seed in tqdm(todo, desc="plants", unit="plant"):
        model, _ = load_model(path, device=a.device)
        planted = damp_weights(model, layer, site, n, a.scale, seed)
        with fast_scan_if_allowed(model):
            damped = evaluate(model, test)
        row: dict = {
            "layer": layer,
            "site": site,
            "count": n,
            "seed": seed,
            "channels": planted,
            "damped_test": {"loss": damped.loss, "accuracy": damped.accuracy},
            "finds": [],
        }
        for (docs, data), screen in itertools.product(calibration.items(), a.screen):
            t0 = time.time()
            result = find(
                model,
                data,
                progress=False,
                model_name=f"{a.model} planted",
                screen=screen,
                validation=validation.get(docs),
            )
            seconds = time.time() - t0
            iv = result.spec.interventions[0]
            channels = list(iv.channels) if isinstance(iv.channels, tuple) else []
            same_site = iv.site == site or (arch.family == "mamba1" and TWINS.get(iv.site) == site)
            hit = sorted(set(planted) & set(channels)) if (iv.layers[0] == layer and same_site) else []
            width = arch.site_width(iv.site)
            draw, control_seed = sorted(random.Random(0).sample(range(width), len(channels))), 0
            while (iv.layers[0], draw) == (layer, planted) and same_site:
                control_seed += 1
                draw = sorted(random.Random(control_seed).sample(range(width), len(channels)))
            control = SteeringSpec.single(iv.layers[0], iv.site, draw, iv.scale) if channels else None
            with fast_scan_if_allowed(model):
                steered = evaluate(model, test, result.spec)
                randomized = evaluate(model, test, control) if control else steered
            row["finds"].append(
                {
                    "docs_per_task": docs,
                    "screen": screen,
                    "seconds": round(seconds, 1),
                    "found": {
                        "layer": iv.layers[0],
                        "site": iv.site,
                        "channels": channels,
                        "scale": iv.scale,
                    },
                    "layer_ok": iv.layers[0] == layer,
                    "site_ok": same_site,
                    "recall": len(hit) / len(planted),
                    "calibration_loss": {"damped": result.base.loss, "steered": result.best.loss},
                    "validation": result.scores["validation"],
                    "steered_test": {"loss": steered.loss, "accuracy": steered.accuracy},
                    "random_test": {"loss": randomized.loss, "accuracy": randomized.accuracy},
                    "win_back_loss": fraction(damped.loss, intact.loss, steered.loss),
                    "win_back_accuracy": fraction(-damped.accuracy, -intact.accuracy, -steered.accuracy),
                    "random_win_back_loss": fraction(damped.loss, intact.loss, randomized.loss),
                }
            )
        doc["plants"].append(row)
        tmp = a.out.with_name(f".{a.out.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, a.out)
    print(table(doc))
    return doc


def table(doc: dict) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.0f}%"

    lines = [
        f"intact test: loss {doc['intact_test']['loss']:.4f}, accuracy {doc['intact_test']['accuracy']:.3f} "
        f"({doc['test_docs']} documents)",
        "",
        "| plant | docs/task | screen | test loss damped | test acc damped | found | layer+site | recall | "
        "win-back loss | win-back acc | random win-back loss | find s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["plants"]:
        name = f"L{row['layer']} {row['site']} {row['count']}x{doc['scale']:g} s{row['seed']}"
        for f in row["finds"]:
            found = f["found"]
            hit = "yes" if f["layer_ok"] and f["site_ok"] else "no"
            lines.append(
                f"| {name} | {f['docs_per_task']} | {f['screen']} | {row['damped_test']['loss']:.4f} | "
                f"{row['damped_test']['accuracy']:.3f} | L{found['layer']} {found['site']} "
                f"{len(found['channels'])}x{found['scale']:g} | {hit} | "
                f"{pct(f['recall'])} | {pct(f['win_back_loss'])} | {pct(f['win_back_accuracy'])} | "
                f"{pct(f['random_win_back_loss'])} | {f['seconds']:.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
