"""The held-out TEST table of docs/finder.md: the found spec against its controls, through lm-eval.

For each model: unsteered, the spec `ssmsteer find` writes (its default calibration data), a control
with as many random channels (same layer, site and scale), and the paper-style heuristic (layer from the
Δ-bias statistics, its 16 highest-variance mixer_out channels, ×5). Prints the Markdown table of
docs/finder.md (score ± standard error per task and length) and writes the specs and raw scores under
--out-dir.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 ssmsteer study find-table \\
        --models ref-mamba1 --samples 20 --lengths 512 2048

`--plant LAYER` damps 8 random channels (seed 0) of that layer's mixer_out (out_proj rows) by 0.2 first
(the planted-bottleneck validation through lm-eval; `ssmsteer study damp`) and adds the undamped model's
row; `--plant-site`, `--plant-channels`, `--plant-scale` and `--plant-seed` change the site (mixer_out,
ssm_out: out_proj columns, B or C: x_proj rows), the number of channels, the scale and the seed of the
random choice. The finder sees only the CALIBRATION split; every score in the table comes from the TEST
split through `lm_eval --model mamba-steered`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lm_eval_ssmsteer.finder.data import DEFAULT_TASKS
from lm_eval_ssmsteer.studies.damping import PLANT_SITES, PLANTED_CHANNELS, PLANTED_SCALE


def mean_of_columns(per_col: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """Mean over the columns and its standard error (the columns' documents are independent draws)."""
    n = len(per_col)
    return sum(v for v, _ in per_col.values()) / n, sum(e * e for _, e in per_col.values()) ** 0.5 / n


def win_back(undamped, damped, steered) -> dict[str, float | None]:
    """(steered − damped) / (undamped − damped) of the column means, with a delta-method standard error
    that treats the three rows as independent (they score the same documents, so it is conservative)."""
    (u, su), (d, sd), (f, sf) = (mean_of_columns(row) for row in (undamped, damped, steered))
    gap = u - d
    if gap <= 0:
        return {"gap": gap, "fraction": None, "stderr": None}
    r = (f - d) / gap
    var = (sf**2 + sd**2 + r * r * (su**2 + sd**2) - 2 * r * sd**2) / gap**2
    return {"gap": gap, "gap_stderr": (su**2 + sd**2) ** 0.5, "fraction": r, "stderr": max(var, 0.0) ** 0.5}


def plant_name(a: argparse.Namespace) -> str:
    """``planted-L{layer}``; with any of the plant's settings changed from the first protocol's (8 mixer_out
    channels ×0.2, seed 0) ``-{site}-{channels}x{scale}-seed{seed}`` follows."""
    name = f"planted-L{a.plant}"
    if (a.plant_site, a.plant_channels, a.plant_scale, a.plant_seed) != ("mixer_out", 8, 0.2, 0):
        name += f"-{a.plant_site}-{a.plant_channels}x{a.plant_scale:g}-seed{a.plant_seed}"
    return name


def find_suffix(a: argparse.Namespace) -> str:
    """``-screen{N}`` and ``-docs{N}`` for find's options given."""
    suffix = "" if a.screen is None else f"-screen{a.screen}"
    return suffix + ("" if a.docs_per_task is None else f"-docs{a.docs_per_task}")


def paper_heuristic_spec(model, data, out: Path) -> Path:
    """The authors' recipe: Δ-bias layer, top-16 variance channels of its mixer output, scale 5."""
    from lm_eval_ssmsteer.finder import methods
    from lm_eval_ssmsteer.mamba.arch import describe_model
    from lm_eval_ssmsteer.spec import SteeringSpec

    arch = describe_model(model)
    layer = methods.dt_bias_layer(methods.dt_bias_layers(model, arch))
    device = next(model.parameters()).device
    batches = [(ids.to(device), labels.to(device)) for ids, labels in data.batches()]
    variance = methods.activation_variance(model, batches, [(layer, "mixer_out")])[(layer, "mixer_out")]
    channels = sorted(variance.argsort(descending=True)[:16].tolist())
    spec = SteeringSpec.single(
        layer, "mixer_out", channels, 5.0, provenance={"source": "paper-style heuristic"}
    )
    spec.save(out)
    return out


def random_control_spec(found: Path, width: int, out: Path, avoid: list[int] | None = None) -> Path:
    """As many random channels as the found spec, same layer, site and scale (``control_channels``:
    never ``avoid``, the planted channels when the spec sits at the plant's layer and site)."""
    from lm_eval_ssmsteer.spec import SteeringSpec, load_spec
    from lm_eval_ssmsteer.studies.damping import control_channels

    iv = load_spec(str(found)).interventions[0]
    k = len(iv.channels) if isinstance(iv.channels, tuple) else width
    channels, seed = control_channels(width, k, avoid)
    SteeringSpec.single(
        iv.layers[0], iv.site, channels, iv.scale, provenance={"source": f"random control, seed {seed}"}
    ).save(out)
    return out


def find_args(
    path: str,
    out: Path,
    method: str | None,
    screen: int | None = None,
    device: str = "cpu",
    docs_per_task: int | None = None,
) -> argparse.Namespace:
    """The arguments of `ssmsteer find --model PATH --out OUT [--method METHOD] [--screen N]
    [--docs-per-task N] --device DEVICE`: every other at its default (``method`` None: find's)."""
    from lm_eval_ssmsteer.finder import cli as find_cli

    parser = argparse.ArgumentParser()
    find_cli.add_parser(parser.add_subparsers())
    extra = ["--device", device] + ([] if screen is None else ["--screen", str(screen)])
    extra += [] if docs_per_task is None else ["--docs-per-task", str(docs_per_task)]
    extra += [] if method is None else ["--method", method]
    return parser.parse_args(["find", "--model", path, "--out", str(out), "--no-progress", *extra])


def run_find(path: str, found: Path, a: argparse.Namespace):
    """`ssmsteer find` on ``path`` writing ``found``: (its arguments, its result, seconds)."""
    from lm_eval_ssmsteer.finder import cli as find_cli

    args = find_args(path, found, a.method, a.screen, a.device, a.docs_per_task)
    started = time.time()
    _, result = find_cli.run(args)
    return args, result, time.time() - started


def finder_calibration(tokenizer, args: argparse.Namespace, result):
    """The calibration data `find` saw with ``args`` (checked against the hash in its spec)."""
    from lm_eval_ssmsteer.finder.data import encode_pairs, task_pairs, token_counter

    pairs = task_pairs(
        args.tasks or list(DEFAULT_TASKS),
        "calibration",
        args.docs_per_task,
        length=args.length,
        count_tokens=token_counter(tokenizer),
    )
    data = encode_pairs(tokenizer, pairs, "calibration")
    assert data.sha256 == result.spec.provenance["calibration"]["sha256"], "not the finder's own data"
    return data


def comparison_specs(model, tokenizer, find: argparse.Namespace, result, tag: str, a, planted) -> dict:
    """Label -> spec file (None: unsteered) of every row of one model's table."""
    from lm_eval_ssmsteer.mamba.arch import describe_model

    iv = result.spec.interventions[0]
    at_plant = planted is not None and all(found_at_plant(iv, a, describe_model(model).family))
    specs = {
        "unsteered": None,
        "found": find.out,
        "random channels": random_control_spec(
            find.out,
            describe_model(model).site_width(iv.site),
            a.out_dir / f"{tag}.random.json",
            avoid=planted if at_plant else None,
        ),
        "paper heuristic": paper_heuristic_spec(
            model, finder_calibration(tokenizer, find, result), a.out_dir / f"{tag}.paper.json"
        ),
    }
    return specs if planted is None else {"undamped": None, **specs}


def found_at_plant(iv, a: argparse.Namespace, family: str) -> tuple[bool, bool]:
    """(the spec's layer is the planted one, its site is the planted one or its twin: on Mamba-1, B_n and
    C_n enter only as C_n·h_n with h linear in B, so scaling either is the same intervention, as are
    ssm_out and gate in y ⊙ SiLU(z); the finder sweeps one of each twin)."""
    from lm_eval_ssmsteer.mamba.sites import same_site

    return iv.layers[0] == a.plant, same_site(iv.site, a.plant_site, family)


def score_specs(specs: dict, paths: dict[str, str], tag: str, a: argparse.Namespace) -> tuple[dict, dict]:
    """(label -> column -> (score, stderr), label -> seconds) on the TEST split; ``paths`` gives the model
    each label is scored on."""
    from lm_eval_ssmsteer.lmeval.runs import column_scores, evaluate

    scores, seconds = {}, {}
    for label, spec in specs.items():
        started = time.time()
        metadata = {"num_samples": a.samples, "max_seq_lengths": a.lengths}
        out = evaluate(paths[label], a.tasks, metadata, spec, a.device, a.batch_size)
        scores[label] = column_scores(out, a.tasks, a.lengths)
        seconds[label] = round(time.time() - started, 1)
        print(f"{tag} {label}: {seconds[label]:.0f}s {scores[label]}", flush=True)
    return scores, seconds


def plant_outcome(family: str, iv, planted: list[int], scores: dict, tag: str, a) -> dict:
    """What `find` recovered of the plant and the win-back of each steered row; printed too."""
    found_channels = list(iv.channels) if isinstance(iv.channels, tuple) else iv.channels
    layer_ok, site_ok = found_at_plant(iv, a, family)
    hit = sorted(set(planted) & set(found_channels)) if layer_ok and site_ok else []
    undamped, damped = scores["undamped"], scores["unsteered"]
    outcome = {
        "planted_recovered": {
            "layer": layer_ok,
            "site": site_ok,
            "channels": hit,
            "recall": len(hit) / len(planted),
        },
        "win_back": {
            label: win_back(undamped, damped, scores[label])
            for label in ("found", "random channels", "paper heuristic")
        },
    }
    gap = {c: undamped[c][0] - damped[c][0] for c in undamped}
    print(
        f"{tag}: gap per column {gap}; win-back {outcome['win_back']}\n"
        f"{tag}: planted layer {a.plant} {a.plant_site} {planted}; found layer {iv.layers[0]} {iv.site}; "
        f"{len(hit)}/{len(planted)} planted channels among {len(found_channels)}",
        flush=True,
    )
    return outcome


def raw_entry(result, scores: dict, seconds: dict, find_seconds: float, planted, a) -> dict:
    """One model's record in the JSON under --out-dir."""
    iv = result.spec.interventions[0]
    provenance = result.spec.provenance
    plant = {
        "planted_layer": a.plant,
        "planted_site": None if planted is None else a.plant_site,
        "planted_scale": None if planted is None else a.plant_scale,
        "planted_seed": None if planted is None else a.plant_seed,
        "planted_channels": planted,
    }
    return {
        "scores": {
            label: {c: {"score": v, "stderr": e} for c, (v, e) in s.items()} for label, s in scores.items()
        },
        "samples_per_column": a.samples,
        "find_seconds": round(find_seconds, 1),
        "eval_seconds": seconds,
        "chosen": result.scores["chosen"],
        "spec": result.spec.to_dict(),
        **plant,
        "found_channels": list(iv.channels) if isinstance(iv.channels, tuple) else iv.channels,
        "calibration": provenance["calibration"],
        "calibration_loss": provenance["calibration_loss"],
        "calibration_accuracy": provenance["calibration_accuracy"],
    }


def study_model(name: str, a: argparse.Namespace) -> tuple[str, dict, dict]:
    """One model's rows: (its tag, its JSON record, label -> column -> (score, stderr))."""
    from lm_eval_ssmsteer.loading import load_model, resolve_model_path
    from lm_eval_ssmsteer.mamba.arch import describe_model
    from lm_eval_ssmsteer.studies.damping import save_damped

    original = resolve_model_path(name)
    tag, path, planted = Path(name).name, original, None
    with tempfile.TemporaryDirectory() as tmp:
        if a.plant is not None:
            path, planted = save_damped(
                original, a.plant, Path(tmp), a.plant_seed, a.plant_site, a.plant_channels, a.plant_scale
            )
            tag += f"-{plant_name(a)}"
        tag += find_suffix(a)
        find, result, find_seconds = run_find(path, a.out_dir / f"{tag}.found.json", a)
        print(f"{tag}: find {find_seconds:.0f}s, chosen {result.scores['chosen']}", flush=True)
        model, tokenizer = load_model(path, device=a.device)
        specs = comparison_specs(model, tokenizer, find, result, tag, a, planted)
        paths = {label: original if label == "undamped" else path for label in specs}
        scores, seconds = score_specs(specs, paths, tag, a)
    entry = raw_entry(result, scores, seconds, find_seconds, planted, a)
    if planted is not None:
        family = describe_model(model).family
        entry.update(plant_outcome(family, result.spec.interventions[0], planted, scores, tag, a))
    return tag, entry, scores


def table_rows(tag: str, scores: dict, cols: list[str]) -> list[str]:
    """The Markdown rows of one model: score ± standard error per column, and the mean."""
    rows = []
    for label, per_col in scores.items():
        mean = sum(v for v, _ in per_col.values()) / len(per_col)
        cells = " | ".join(f"{per_col[c][0]:.2f} ± {per_col[c][1]:.2f}" for c in cols)
        rows.append(f"| {tag} | {label} | {cells} | {mean:.3f} |")
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=["ref-mamba1"])
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="TEST tasks of the table")
    p.add_argument(
        "--lengths", nargs="+", type=int, default=[512, 2048], help="lengths of the long-context tasks"
    )
    p.add_argument("--samples", type=int, default=20, help="TEST documents per task (and per length)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--method", default=None, help="find's --method (default: find's default)")
    p.add_argument("--screen", type=int, default=None, help="find's --screen (default: find's default)")
    p.add_argument("--device", default="cpu", help="torch device of find and lm-eval (default cpu)")
    p.add_argument("--docs-per-task", type=int, default=None, help="find's --docs-per-task (default: find's)")
    p.add_argument("--plant", type=int, default=None, metavar="LAYER", help="damp channels of LAYER first")
    p.add_argument("--plant-site", default="mixer_out", choices=PLANT_SITES)
    p.add_argument("--plant-channels", type=int, default=PLANTED_CHANNELS, help="how many channels to damp")
    p.add_argument("--plant-scale", type=float, default=PLANTED_SCALE, help="the damping factor")
    p.add_argument("--plant-seed", type=int, default=0, help="seed of the random choice of channels")
    p.add_argument(
        "--out-dir", type=Path, default=Path("docs/results/finder"), help="default: docs/results/finder"
    )


def run(a: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.files import atomic_write_text
    from lm_eval_ssmsteer.lmeval.runs import columns

    a.out_dir.mkdir(parents=True, exist_ok=True)
    cols = [c for task in a.tasks for c, _ in columns(task, a.lengths)]
    raw, rows = {}, []
    for name in a.models:
        tag, raw[tag], scores = study_model(name, a)
        rows += table_rows(tag, scores, cols)
    header = "| model | steering | " + " | ".join(cols) + " | mean |"
    print("\n".join([header, "|" + "---|" * (len(cols) + 3), *rows]))
    name = (plant_name(a) if a.plant is not None else "table") + find_suffix(a)
    atomic_write_text(a.out_dir / f"{name}.json", json.dumps(raw, indent=1) + "\n")
    return 0
