"""Held-out TEST scores of the reference models: unsteered, the spec `ssmsteer find` writes (its default
calibration data), a control with as many random channels (same layer, site and scale), and the
paper-style heuristic (layer from the Δ-bias statistics, its 16 highest-variance mixer_out channels, ×5).
Prints the Markdown table of docs/finder.md (score ± standard error per task and length) and writes the
specs and raw scores under --out-dir.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/find_table.py \
        --models ref-mamba1 --samples 20 --lengths 512 2048

`--plant LAYER` damps 8 random channels (seed 0) of that layer's mixer_out (out_proj rows) by 0.2 first
(the planted-bottleneck validation through lm-eval) and adds the undamped model's row; `--plant-site`,
`--plant-channels`, `--plant-scale` and `--plant-seed` change the site (mixer_out, ssm_out: out_proj
columns, B or C: x_proj rows), the number of channels, the scale and the seed of the random choice. The
finder sees only the CALIBRATION split; every score in the table comes from the TEST split through
`lm_eval --model mamba-steered`.
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
PLANTED_CHANNELS = 8
PLANTED_SCALE = 0.2


def run_lm_eval(
    path: str,
    spec: Path | str | None,
    tasks: list[str],
    lengths: list[int],
    samples: int,
    batch_size: int,
    device: str = "cpu",
    log_samples: bool = False,
) -> dict:
    """`simple_evaluate` of `path` (steered by `spec`) through mamba-steered on the TEST split: `samples`
    documents per task and length; Mamba-1 on the CPU with the fast scan."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lm_eval_ssmsteer.lmeval.registration import register_model

    register_model()  # where the start-up hook is not installed (a checkout on PYTHONPATH)

    model_args = {"pretrained": path, "dtype": "float32"}
    mamba1 = json.loads((Path(path) / "config.json").read_text())["model_type"] in ("mamba", "falcon_mamba")
    if mamba1 and device == "cpu":
        model_args["fast_scan"] = True
    if spec is not None:
        model_args["steer"] = str(spec)
    manager = TaskManager(
        include_path=str(ROOT / "tasks"),
        include_defaults=False,
        # the tasks count lengths in the tokenizer of `pretrained` (lm_eval's CLI passes model_args so too)
        metadata={"pretrained": path, "num_samples": samples, "max_seq_lengths": lengths},
    )
    return simple_evaluate(
        model="mamba-steered",
        model_args=model_args,
        tasks=tasks,
        task_manager=manager,
        device=device,
        batch_size=batch_size,
        log_samples=log_samples,
    )


def lm_eval_scores(
    path: str,
    spec: Path | None,
    tasks: list[str],
    lengths: list[int],
    samples: int,
    batch_size: int,
    device: str = "cpu",
) -> dict[str, tuple[float, float]]:
    """(score, standard error) per column on the TEST split, through mamba-steered: exact_match for the
    short tasks, RULER's string_match_all per length ("task@length") for the long-context ones."""
    out = run_lm_eval(path, spec, tasks, lengths, samples, batch_size, device)
    scores = {}
    for task in tasks:
        result = out["results"][task]
        for column, metric in columns(task, lengths):
            scores[column] = (result[f"{metric},none"], result[f"{metric}_stderr,none"])
    return scores


def columns(task: str, lengths: list[int]) -> list[tuple[str, str]]:
    """(column name, lm-eval metric) of a task: one per length for the long-context tasks."""
    from lm_eval_ssmsteer.taskdata import TASKS

    short = task.removeprefix("ssm_")
    if TASKS[task].long_context:
        return [(f"{short}@{length}", str(length)) for length in lengths]
    return [(short, "exact_match")]


def mean_and_se(per_col: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """Mean over the columns and its standard error (the columns' documents are independent draws)."""
    n = len(per_col)
    return sum(v for v, _ in per_col.values()) / n, sum(e * e for _, e in per_col.values()) ** 0.5 / n


def win_back(undamped, damped, steered) -> dict[str, float | None]:
    """(steered − damped) / (undamped − damped) of the column means, with a delta-method standard error
    that treats the three rows as independent (they score the same documents, so it is conservative)."""
    (u, su), (d, sd), (f, sf) = mean_and_se(undamped), mean_and_se(damped), mean_and_se(steered)
    gap = u - d
    if gap <= 0:
        return {"gap": gap, "fraction": None, "stderr": None}
    r = (f - d) / gap
    var = (sf**2 + sd**2 + r * r * (su**2 + sd**2) - 2 * r * sd**2) / gap**2
    return {"gap": gap, "gap_stderr": (su**2 + sd**2) ** 0.5, "fraction": r, "stderr": max(var, 0.0) ** 0.5}


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


def random_control_spec(
    found: Path, width: int, out: Path, seed: int = 0, planted: tuple[int, str, list[int]] | None = None
) -> Path:
    """As many random channels as the found spec, same layer, site and scale. `planted` (layer, site,
    channels): should the draw be exactly the planted channels at their layer and site (the plant and the
    control draw with the same generator), the next seed is used, so the control is never the plant."""
    from lm_eval_ssmsteer.spec import SteeringSpec, load_spec

    iv = load_spec(str(found)).interventions[0]
    k = len(iv.channels) if isinstance(iv.channels, tuple) else width
    layer = iv.layers[0]
    channels = sorted(random.Random(seed).sample(range(width), k))
    while planted is not None and (layer, iv.site, channels) == planted:
        seed += 1
        channels = sorted(random.Random(seed).sample(range(width), k))
    SteeringSpec.single(
        layer, iv.site, channels, iv.scale, provenance={"source": f"random control, seed {seed}"}
    ).save(out)
    return out


def damp_weights(model, layer: int, site: str, count: int, scale: float, seed: int) -> list[int]:
    """Damp `count` random channels (`seed`) of `layer`'s `site` by `scale`, in the weights (in place):
    mixer_out = out_proj rows, ssm_out = out_proj columns, B / C = x_proj rows (Mamba-1; x_proj has no
    bias, so scaling its rows scales B or C exactly). Returns the channels, sorted."""
    import torch

    mixer = model.base_model.layers[layer].mixer
    config = model.config
    if site == "mixer_out":
        width, weight, rows = config.hidden_size, mixer.out_proj.weight, 0
    elif site == "ssm_out":
        width, weight, rows = config.intermediate_size, mixer.out_proj.weight.T, 0
    elif site in ("B", "C"):
        width, weight = config.state_size, mixer.x_proj.weight
        rows = mixer.time_step_rank + (config.state_size if site == "C" else 0)
    else:
        raise ValueError(f"--plant-site: {site!r}; allowed: mixer_out, ssm_out, B, C")
    channels = sorted(random.Random(seed).sample(range(width), count))
    with torch.no_grad():
        weight[[rows + c for c in channels]] *= scale
    return channels


def plant(
    path: str,
    layer: int,
    folder: Path,
    seed: int = 0,
    site: str = "mixer_out",
    count: int = PLANTED_CHANNELS,
    scale: float = PLANTED_SCALE,
) -> tuple[str, list[int]]:
    """A copy of the model saved in `folder` with `count` random channels of `layer`'s `site` damped by
    `scale` (`damp_weights`)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    channels = damp_weights(model, layer, site, count, scale, seed)
    model.save_pretrained(folder)
    for name in Path(path).iterdir():
        if name.name.startswith("tokenizer") or name.name == "special_tokens_map.json":
            shutil.copy(name, folder / name.name)
    return str(folder), channels


def find_args(
    path: str,
    out: Path,
    method: str,
    screen: int | None = None,
    device: str = "cpu",
    docs_per_task: int | None = None,
):
    """The arguments of `ssmsteer find --model PATH --out OUT --method METHOD [--screen N]
    [--docs-per-task N] --device DEVICE`: every other at its default."""
    from lm_eval_ssmsteer.finder import cli as find_cli

    parser = argparse.ArgumentParser()
    find_cli.add_parser(parser.add_subparsers())
    extra = ["--device", device] + ([] if screen is None else ["--screen", str(screen)])
    extra += [] if docs_per_task is None else ["--docs-per-task", str(docs_per_task)]
    return parser.parse_args(
        ["find", "--model", path, "--out", str(out), "--method", method, "--no-progress", *extra]
    )


def main() -> int:
    from lm_eval_ssmsteer.finder.data import DEFAULT_TASKS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ref-mamba1"])
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="TEST tasks of the table")
    p.add_argument(
        "--lengths", nargs="+", type=int, default=[512, 2048], help="lengths of the long-context tasks"
    )
    p.add_argument("--samples", type=int, default=20, help="TEST documents per task (and per length)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--method", default="causal")
    p.add_argument("--screen", type=int, default=None, help="find's --screen (default: find's default)")
    p.add_argument("--device", default="cpu", help="torch device of find and lm-eval (default cpu)")
    p.add_argument("--docs-per-task", type=int, default=None, help="find's --docs-per-task (default: find's)")
    p.add_argument("--plant", type=int, default=None, metavar="LAYER", help="damp channels of LAYER first")
    p.add_argument("--plant-site", default="mixer_out", choices=["mixer_out", "ssm_out", "B", "C"])
    p.add_argument("--plant-channels", type=int, default=PLANTED_CHANNELS, help="how many channels to damp")
    p.add_argument("--plant-scale", type=float, default=PLANTED_SCALE, help="the damping factor")
    p.add_argument("--plant-seed", type=int, default=0, help="seed of the random choice of channels")
    p.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "results" / "finder")
    a = p.parse_args()

    from lm_eval_ssmsteer.finder import cli as find_cli
    from lm_eval_ssmsteer.finder.data import encode_pairs, task_pairs, token_counter
    from lm_eval_ssmsteer.loading import load_model, resolve_model_path
    from lm_eval_ssmsteer.mamba.arch import describe_model

    cols = [c for task in a.tasks for c, _ in columns(task, a.lengths)]
    plant_name = f"planted-L{a.plant}"  # the default plant (8 mixer_out channels x0.2, seed 0) keeps its name
    if (a.plant_site, a.plant_channels, a.plant_scale, a.plant_seed) != ("mixer_out", 8, 0.2, 0):
        plant_name += f"-{a.plant_site}-{a.plant_channels}x{a.plant_scale:g}-seed{a.plant_seed}"
    a.out_dir.mkdir(parents=True, exist_ok=True)
    rows, raw = [], {}
    for name in a.models:
        path = resolve_model_path(name)
        tmp = Path(tempfile.mkdtemp())
        tag = Path(name).name
        planted = None
        if a.plant is not None:
            original = path
            path, planted = plant(
                path, a.plant, tmp, a.plant_seed, a.plant_site, a.plant_channels, a.plant_scale
            )
            tag = f"{Path(name).name}-{plant_name}"
        if a.screen is not None:
            tag += f"-screen{a.screen}"
        if a.docs_per_task is not None:
            tag += f"-docs{a.docs_per_task}"
        found = a.out_dir / f"{tag}.found.json"
        args = find_args(path, found, a.method, a.screen, a.device, a.docs_per_task)
        t0 = time.time()
        _, result = find_cli.run(args)
        find_seconds = time.time() - t0
        print(f"{tag}: find {find_seconds:.0f}s, chosen {result.scores['chosen']}", flush=True)

        model, tokenizer = load_model(path, device=a.device)
        pairs = task_pairs(
            args.tasks or list(DEFAULT_TASKS),
            "calibration",
            args.docs_per_task,
            length=args.length,
            count_tokens=token_counter(tokenizer),
        )
        data = encode_pairs(tokenizer, pairs, "calibration")
        assert data.sha256 == result.spec.provenance["calibration"]["sha256"]  # the finder's own data
        iv = result.spec.interventions[0]
        width = describe_model(model).site_width(iv.site)
        specs = {
            "unsteered": None,
            "found": found,
            "random channels": random_control_spec(
                found,
                width,
                a.out_dir / f"{tag}.random.json",
                planted=None if planted is None else (a.plant, a.plant_site, planted),
            ),
            "paper heuristic": paper_heuristic_spec(model, data, a.out_dir / f"{tag}.paper.json"),
        }
        if planted is not None:
            specs = {"undamped": None, **specs}
        scores, seconds = {}, {}
        for label, spec in specs.items():
            t0 = time.time()
            scores[label] = lm_eval_scores(
                original if label == "undamped" else path,
                spec,
                a.tasks,
                a.lengths,
                a.samples,
                a.batch_size,
                a.device,
            )
            seconds[label] = round(time.time() - t0, 1)
            print(f"{tag} {label}: {seconds[label]:.0f}s {scores[label]}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
        found_channels = list(iv.channels) if isinstance(iv.channels, tuple) else iv.channels
        raw[tag] = {
            "scores": {
                label: {c: {"score": v, "stderr": e} for c, (v, e) in s.items()}
                for label, s in scores.items()
            },
            "samples_per_column": a.samples,
            "find_seconds": round(find_seconds, 1),
            "eval_seconds": seconds,
            "chosen": result.scores["chosen"],
            "spec": result.spec.to_dict(),
            "planted_layer": a.plant,
            "planted_site": None if planted is None else a.plant_site,
            "planted_scale": None if planted is None else a.plant_scale,
            "planted_seed": None if planted is None else a.plant_seed,
            "planted_channels": planted,
            "found_channels": found_channels,
            "calibration": result.spec.provenance["calibration"],
            "calibration_loss": result.spec.provenance["calibration_loss"],
            "calibration_accuracy": result.spec.provenance["calibration_accuracy"],
        }
        if planted is not None:
            # on Mamba-1, B_n and C_n enter only as C_n·h_n with h linear in B: scaling either is the same
            # intervention (so are ssm_out and gate, y ⊙ SiLU(z)), and the finder sweeps one of each twin
            twins = {"B": "C", "C": "B", "ssm_out": "gate", "gate": "ssm_out"}
            same_site = iv.site == a.plant_site or (
                describe_model(model).family == "mamba1" and twins.get(iv.site) == a.plant_site
            )
            same = iv.layers[0] == a.plant and same_site
            hit = sorted(set(planted) & set(found_channels)) if same else []
            raw[tag]["planted_recovered"] = {
                "layer": iv.layers[0] == a.plant,
                "site": same_site,
                "channels": hit,
                "recall": len(hit) / len(planted),
            }
            undamped, damped = scores["undamped"], scores["unsteered"]
            gap = {c: undamped[c][0] - damped[c][0] for c in cols}
            for label in ("found", "random channels", "paper heuristic"):
                raw[tag].setdefault("win_back", {})[label] = win_back(undamped, damped, scores[label])
            print(
                f"{tag}: gap per column {gap}; win-back {raw[tag]['win_back']}\n"
                f"{tag}: planted layer {a.plant} {a.plant_site} {planted}; "
                f"found layer {iv.layers[0]} {iv.site}; "
                f"{len(hit)}/{len(planted)} planted channels among {len(found_channels)}",
                flush=True,
            )
        for label, per_col in scores.items():
            mean = sum(v for v, _ in per_col.values()) / len(per_col)
            cells = " | ".join(f"{per_col[c][0]:.2f} ± {per_col[c][1]:.2f}" for c in cols)
            rows.append(f"| {tag} | {label} | {cells} | {mean:.3f} |")
    header = "| model | steering | " + " | ".join(cols) + " | mean |"
    print("\n".join([header, "|" + "---|" * (len(cols) + 3), *rows]))
    name = plant_name if a.plant is not None else "table"
    if a.screen is not None:
        name += f"-screen{a.screen}"
    if a.docs_per_task is not None:
        name += f"-docs{a.docs_per_task}"
    (a.out_dir / f"{name}.json").write_text(json.dumps(raw, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
