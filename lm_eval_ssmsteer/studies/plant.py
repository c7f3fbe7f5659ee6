"""Planted bottlenecks in bulk: damp random channels, run `find`, score the found spec on TEST documents.

For every (layer, site, seed) given, damp random channels of a shipped model in its weights (`ssmsteer
study damp`), run `find` on the CALIBRATION split and score the found spec on TEST documents.

Per plant it records: the damage on the test documents (teacher-forced answer loss and whole-answer
accuracy, `finder.methods.evaluate`), what `find` chose (layer, site, channels), whether it names the
planted layer and site (B/C and ssm_out/gate are the same intervention and count as one site), the share
of planted channels in the spec, the test win-back of the found spec ((damped - steered) / (damped -
intact) of the loss; of the accuracy where the plant cost any), and the same for a control with as many
random channels at the found layer, site and scale. The plants are chosen by the arguments only (random
channels, seeded), never by a finder output, and every plant is reported. Lm-eval's generation metrics
for a plant are `ssmsteer study find-table --plant ...` (slower, CPU or GPU).

    ssmsteer study plant --layers 1 2 3 4 --plants B:4 mixer_out:16 ssm_out:32 --seeds 10 \\
        --docs-per-task 2 8 --screen 3 100 --device cuda --out plant_study.json

Writes --out after every plant (atomically), so an interrupted run keeps what it measured; prints a
Markdown table at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

from lm_eval_ssmsteer.finder.data import DEFAULT_LENGTH, DEFAULT_TASKS, CalibrationData
from lm_eval_ssmsteer.studies.damping import PLANT_SITES


def parse_plant(text: str) -> tuple[str, int]:
    """A --plants value SITE:COUNT."""
    site, _, count = text.partition(":")
    if site not in PLANT_SITES or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(
            f"--plants: {text!r}; allowed: SITE:COUNT, SITE one of {', '.join(PLANT_SITES)}, COUNT >= 1"
        )
    return site, int(count)


def fraction(damped: float, intact: float, steered: float) -> float | None:
    """Share of the damage undone: (damped - steered) / (damped - intact); None when there was none."""
    gap = damped - intact
    return None if abs(gap) < 1e-9 else (damped - steered) / gap


@dataclass
class Documents:
    """The study's encoded documents: the TEST batches (on the device) and, per calibration size
    (documents per task), the calibration data and its validation data (None with --no-validation)."""

    test: list
    calibration: dict[int, CalibrationData]
    validation: dict[int, CalibrationData | None]


def documents(tokenizer, a: argparse.Namespace) -> Documents:
    """The test documents, and the calibration and validation documents `ssmsteer find` would draw."""
    from lm_eval_ssmsteer.finder.data import encode_pairs, task_pairs, token_counter, validation_pairs

    count = token_counter(tokenizer)

    def pairs(split: str, docs: int) -> list[tuple[str, str]]:
        return task_pairs(a.tasks, split, docs, length=a.length, count_tokens=count)

    test = encode_pairs(tokenizer, pairs("test", a.test_docs), "test split")
    calibration, validation = {}, {}
    for docs in a.docs_per_task:
        drawn = pairs("calibration", docs)
        calibration[docs] = encode_pairs(tokenizer, drawn, "calibration split")
        validation[docs] = None
        if not a.no_validation:  # the documents `ssmsteer find` validates on by default
            held = validation_pairs(a.tasks, drawn, docs, length=a.length, count_tokens=count)
            validation[docs] = encode_pairs(tokenizer, held, "calibration split (validation)")
    on_device = [(i.to(a.device), t.to(a.device)) for i, t in test.batches()]
    return Documents(on_device, calibration, validation)


def test_scores_per_document(model, test: list, spec=None):
    """Each test document's teacher-forced answer loss and correctness (``finder.methods.PerDocument``;
    fast scan where allowed)."""
    from lm_eval_ssmsteer.finder.methods import per_document
    from lm_eval_ssmsteer.mamba.fastscan import fast_scan_if_allowed

    with fast_scan_if_allowed(model):
        return per_document(model, test, spec)


def test_scores(model, test: list, spec=None) -> dict[str, float]:
    """Teacher-forced answer loss and whole-answer accuracy on the test batches (fast scan where allowed)."""
    scored = test_scores_per_document(model, test, spec).summary()
    return {"loss": scored.loss, "accuracy": scored.accuracy}


def random_control(model, iv, avoid: list[int] | None):
    """As many random channels as the found intervention, at its layer, site and scale (never ``avoid``);
    None when it steers every channel."""
    from lm_eval_ssmsteer.mamba.arch import describe_model
    from lm_eval_ssmsteer.spec import SteeringSpec
    from lm_eval_ssmsteer.studies.damping import control_channels

    if not isinstance(iv.channels, tuple):
        return None
    channels, _ = control_channels(describe_model(model).site_width(iv.site), len(iv.channels), avoid)
    return SteeringSpec.single(iv.layers[0], iv.site, channels, iv.scale)


def measure_find(model, row: dict, intact: dict, docs: int, screen: int, data: Documents, name: str) -> dict:
    """`find` with ``docs`` calibration documents a task and ``--screen screen`` on the damped model of
    ``row``: what it found, how much of the plant, and the test win-back of its spec and of a control."""
    from lm_eval_ssmsteer.finder import find
    from lm_eval_ssmsteer.mamba.arch import describe_model
    from lm_eval_ssmsteer.mamba.sites import same_site

    started = time.time()
    result = find(
        model,
        data.calibration[docs],
        progress=False,
        model_name=f"{name} planted",
        screen=screen,
        validation=data.validation[docs],
    )
    seconds = time.time() - started
    iv = result.spec.interventions[0]
    channels = list(iv.channels) if isinstance(iv.channels, tuple) else []
    layer_ok = iv.layers[0] == row["layer"]
    site_ok = same_site(iv.site, row["site"], describe_model(model).family)
    hit = sorted(set(row["channels"]) & set(channels)) if layer_ok and site_ok else []
    steered = test_scores(model, data.test, result.spec)
    control = random_control(model, iv, row["channels"] if layer_ok and site_ok else None)
    randomized = test_scores(model, data.test, control) if control else steered
    damped = row["damped_test"]
    return {
        "docs_per_task": docs,
        "screen": screen,
        "seconds": round(seconds, 1),
        "found": {"layer": iv.layers[0], "site": iv.site, "channels": channels, "scale": iv.scale},
        "layer_ok": layer_ok,
        "site_ok": site_ok,
        "recall": len(hit) / len(row["channels"]),
        "calibration_loss": {"damped": result.base.loss, "steered": result.best.loss},
        "validation": result.scores["validation"],
        "steered_test": steered,
        "random_test": randomized,
        "win_back_loss": fraction(damped["loss"], intact["loss"], steered["loss"]),
        "win_back_accuracy": fraction(-damped["accuracy"], -intact["accuracy"], -steered["accuracy"]),
        "random_win_back_loss": fraction(damped["loss"], intact["loss"], randomized["loss"]),
    }


def measure_plant(path: str, plant: tuple[int, str, int, int], intact: dict, data: Documents, a) -> dict:
    """One plant (layer, site, count, seed): the damage, then every (calibration size, screen) find."""
    from lm_eval_ssmsteer.loading import load_model
    from lm_eval_ssmsteer.studies.damping import damp_weights

    layer, site, count, seed = plant
    model, _ = load_model(path, device=a.device)
    channels = damp_weights(model, layer, site, count, a.scale, seed)
    row = {
        "layer": layer,
        "site": site,
        "count": count,
        "seed": seed,
        "channels": channels,
        "damped_test": test_scores(model, data.test),
        "finds": [],
    }
    for docs, screen in itertools.product(data.calibration, a.screen):
        row["finds"].append(measure_find(model, row, intact, docs, screen, data, a.model))
    return row


def table(doc: dict) -> str:
    """The Markdown summary: one row per plant and find."""

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


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def run(a: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from lm_eval_ssmsteer.files import atomic_write_text
    from lm_eval_ssmsteer.loading import load_model, resolve_model_path
    from lm_eval_ssmsteer.mamba.arch import describe_model

    path = resolve_model_path(a.model)
    model, tokenizer = load_model(path, device=a.device)
    data = documents(tokenizer, a)
    intact = test_scores(model, data.test)
    doc: dict = {
        "model": a.model,
        "model_fingerprint": describe_model(model).fingerprint(),
        "device": a.device,
        "scale": a.scale,
        "tasks": a.tasks,
        "length": a.length,
        "test_docs": sum(ids.shape[0] for ids, _ in data.test),
        "intact_test": intact,
        "plants": [],
    }
    plants = [(layer, site, n, seed) for layer in a.layers for site, n in a.plants for seed in a.seeds]
    for plant in tqdm(plants, desc="plants", unit="plant"):
        doc["plants"].append(measure_plant(path, plant, intact, data, a))
        atomic_write_text(a.out, json.dumps(doc, indent=1) + "\n")
    print(table(doc))
    return 0
