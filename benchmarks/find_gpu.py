"""Wall time of `find` on a mamba-130m-shaped model vs a leave-one-out channel loop on the same budget.

Issue acceptance: "GPU: a mamba-130m-shaped model (24 layers x 768 channels, all sites), 256
calibration sequences of 512 tokens, `find` < 2 minutes; report the time and compare with a
leave-one-out loop on the same budget."

The model is a transformers `MambaForCausalLM` built from a config (hidden 768, 24 layers, state 16,
expand 2, conv 4, vocabulary 50,280) with random weights from a fixed seed: nothing is downloaded, and
what counts is the time, not what is found. The calibration data are seeded random token ids whose
last `--answer-tokens` tokens are the answer. After one warm-up `evaluate` (CUDA initialisation),

1. `find(model, data, progress=False, validation=...)` runs with its defaults (all sites, method causal,
   3 pairs screened) and as many validation documents (seed + 1), as `ssmsteer find` does, and is timed;
2. the paper's leave-one-out baseline ablates one channel at a time (scale 0) and measures the
   calibration loss, one pass per channel, each pass starting at its layer from a cached layer input
   (`LayerInputs`, the fair and fast version): mixer_out of layer 0, 1, ..., then the other sites layer
   by layer, until it has used as much wall time as `find` did (or `--budget-seconds`). The channels
   it scored give seconds per channel and, extrapolated, the time of a full leave-one-out over every
   channel of every (layer, site) and over mixer_out only. A pass from layer 0 runs the whole model,
   so a second estimate ("depth-adjusted") also times a few passes from the last layer and
   interpolates the cost per pass linearly in the layer.

Also recorded: whether the mamba-ssm kernels ran (profiled scan-kernel launches, as in gpu_check.py),
the GPU name and the torch / transformers / kernel versions. Prints a Markdown table; `--out` writes all
numbers as JSON (atomically).

    python benchmarks/find_gpu.py --out find_gpu.json
    python benchmarks/find_gpu.py --device cpu --layers 2 --hidden 32 --docs 8 --length 64 --vocab 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from _kernels import kernel_versions

from lm_eval_ssmsteer.finder.methods import DEFAULT_METHOD, METHODS, VALIDATE_CHOICES
from lm_eval_ssmsteer.finder.search import (
    NARROW_FLOOR,
    FinderError,
    check_grow,
    check_max_scale,
    check_narrow,
    check_narrow_floor,
    check_validate_choice,
    default_grow,
    default_narrow,
    default_validation,
)

VOCAB = 50280
LOO_SITE_ORDER = ("mixer_out", "residual", "delta", "B", "C", "ssm_out", "gate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--docs", type=int, default=256, help="calibration sequences")
    parser.add_argument("--length", type=int, default=512, help="tokens per calibration sequence")
    parser.add_argument("--answer-tokens", type=int, default=8, help="the last N tokens are the answer")
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="wall time of the leave-one-out loop (default: the time find took)",
    )
    parser.add_argument(
        "--probe-passes", type=int, default=3, help="leave-one-out passes timed from the last layer"
    )
    parser.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=METHODS,
        help=f"find's --method (default {DEFAULT_METHOD}, find's)",
    )
    parser.add_argument(
        "--blocks", type=int, default=0, help="find's --blocks N (block screen; default 0, off, as find's)"
    )
    parser.add_argument(
        "--narrow",
        type=int,
        default=None,
        help="find's --narrow W (narrow screen; default: find's, 64 for outlier; 0: off)",
    )
    parser.add_argument(
        "--narrow-floor",
        type=float,
        default=NARROW_FLOOR,
        help=f"find's --narrow-floor R (default {NARROW_FLOOR:g})",
    )
    parser.add_argument(
        "--validate-top",
        type=int,
        default=None,
        help="find's --validate-top N (default: find's, 6 for outlier and 1 for the other methods)",
    )
    parser.add_argument(
        "--validate-choice",
        default=None,
        choices=VALIDATE_CHOICES,
        help="find's --validate-choice (default: find's, paired for outlier with N > 1, else gain)",
    )
    parser.add_argument(
        "--max-scale", type=int, default=8, help="find's --max-scale S (default 8, as find's)"
    )
    parser.add_argument(
        "--grow",
        type=int,
        default=None,
        help="find's --grow ROUNDS (default: find's, 3 for outlier and 0 for the other methods)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file for all numbers")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar for the loop")
    args = parser.parse_args(argv)
    if args.length <= args.answer_tokens:
        parser.error(f"--length {args.length} must exceed --answer-tokens {args.answer_tokens}")
    args.validate_top, args.validate_choice = default_validation(
        args.method, args.validate_top, args.validate_choice
    )
    if args.validate_top < 1:
        parser.error(f"--validate-top {args.validate_top}; allowed: an integer >= 1")
    try:  # find's own checks, before the model is built
        args.narrow = default_narrow(args.method) if args.narrow is None else args.narrow
        args.grow = default_grow(args.method) if args.grow is None else args.grow
        check_narrow(args.narrow, args.method, "--narrow")
        check_narrow_floor(args.narrow_floor, "--narrow-floor")
        check_max_scale(args.max_scale, "--max-scale")
        check_grow(args.grow, "--grow")
        check_validate_choice(args.validate_top, args.validate_choice, flags=True)
    except FinderError as err:
        parser.error(str(err))
    return args


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(args.seed)
    config = MambaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        state_size=args.state,
        expand=2,
        conv_kernel=4,
    )
    dtype = getattr(torch, args.dtype)
    return MambaForCausalLM(config).to(args.device, dtype).eval()


def make_data(args: argparse.Namespace, seed: int | None = None):
    """Seeded random ids, the last ``--answer-tokens`` the answer (``seed`` other than ``--seed``: the
    validation documents, as `ssmsteer find` draws its own)."""
    from lm_eval_ssmsteer.finder.data import CalibrationData

    seed = args.seed if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, args.vocab, (args.docs, args.length), generator=gen)
    start = args.length - args.answer_tokens  # from_ids takes the index of the first answer token
    examples = [(row.tolist(), start) for row in ids]
    return CalibrationData.from_ids(examples, f"random ids (seed {seed}, {args.docs}x{args.length})")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fast_scan(device: str):
    """On CPU, the torch scan find itself uses there (so the baseline is not handicapped); a no-op on GPU."""
    if device.startswith("cuda"):
        return contextlib.nullcontext()
    try:
        from lm_eval_ssmsteer.mamba.fastscan import use_fast_scan
    except ImportError:
        return contextlib.nullcontext()
    return use_fast_scan()


class PassCounter:
    """Batches that completed layer 0 and the last layer: find's passes, whatever its internals."""

    def __init__(self, model):
        self.first = self.last = 0
        layers = model.base_model.layers
        self.handles = [
            layers[0].register_forward_hook(lambda *_: self._bump("first")),
            layers[-1].register_forward_hook(lambda *_: self._bump("last")),
        ]

    def _bump(self, which: str) -> None:
        setattr(self, which, getattr(self, which) + 1)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def kernel_check(model, batches, device: str) -> dict:
    """mamba-ssm scan / causal-conv1d launches in one profiled forward, unsteered and steered."""
    from lm_eval_ssmsteer.spec import SteeringSpec

    info: dict = {"versions": kernel_versions()}
    if not device.startswith("cuda"):
        info.update(path="cpu", scan_launches=None, conv_launches=None, steered_scan_launches=None)
        info["active"] = False
        return info
    from gpu_check import PREFILL_KERNEL, kernel_launches

    ids = batches[0][0][:2]
    n_layers = len(model.base_model.layers)
    steered = SteeringSpec.single(layer=0, site="mixer_out", channels=[0], scale=0.0)
    info["scan_launches"] = kernel_launches(model, None, ids, PREFILL_KERNEL["mamba"], decode=False)
    info["conv_launches"] = kernel_launches(model, None, ids, "causal_conv1d_fwd", decode=False)
    info["steered_scan_launches"] = kernel_launches(
        model, steered, ids, PREFILL_KERNEL["mamba"], decode=False
    )
    info["active"] = min(info["scan_launches"], info["steered_scan_launches"]) >= n_layers
    info["path"] = "mamba-ssm scan kernel" if info["active"] else "torch fallback"
    if info["active"]:
        info["path"] += " + causal-conv1d" if info["conv_launches"] >= n_layers else " (conv on torch)"
    return info


def loo_order(arch, sites) -> list[tuple[int, str]]:
    """mixer_out layer by layer first, then the other sites, layer by layer."""
    first = [(layer, "mixer_out") for layer in range(arch.n_layers) if "mixer_out" in sites]
    rest = [(layer, s) for layer in range(arch.n_layers) for s in sites if s != "mixer_out"]
    return first + rest


def leave_one_out(model, batches, arch, sites, budget: float, device: str, progress: bool) -> dict:
    """Ablate one channel per pass (scale 0) until ``budget`` seconds have passed."""
    from tqdm.auto import tqdm

    from lm_eval_ssmsteer.finder.methods import LayerInputs, evaluate
    from lm_eval_ssmsteer.spec import SteeringSpec

    total = sum(arch.site_width(s) for s in sites) * arch.n_layers
    bar = tqdm(total=total, desc="leave-one-out", unit="channel", disable=not progress, mininterval=5)
    scored: list[dict] = []
    start, start_layer = None, None
    sync(device)
    t0 = time.perf_counter()
    elapsed = 0.0
    with fast_scan(device):
        for layer, site in loo_order(arch, sites):
            if start_layer != layer:
                start = None  # free the previous layer's cached input first
                start = LayerInputs(model, batches, layer)
                start_layer = layer
            for channel in range(arch.site_width(site)):
                spec = SteeringSpec.single(layer=layer, site=site, channels=[channel], scale=0.0)
                t_pass = time.perf_counter()
                score = evaluate(model, batches, spec, start)
                sync(device)
                now = time.perf_counter()
                scored.append(
                    {"layer": layer, "site": site, "channel": channel, "loss": score.loss, "s": now - t_pass}
                )
                bar.update(1)
                elapsed = now - t0
                if elapsed >= budget:
                    break
            if elapsed >= budget:
                break
    bar.close()
    return {"seconds": elapsed, "scored": scored}


def probe_last_layer(model, batches, arch, n: int, device: str) -> list[float]:
    """Seconds of ``n`` leave-one-out passes at the last layer's mixer_out (outside the budget)."""
    from lm_eval_ssmsteer.finder.methods import LayerInputs, evaluate
    from lm_eval_ssmsteer.spec import SteeringSpec

    layer = arch.n_layers - 1
    start = LayerInputs(model, batches, layer)
    times = []
    with fast_scan(device):
        for channel in range(min(n, arch.site_width("mixer_out"))):
            spec = SteeringSpec.single(layer=layer, site="mixer_out", channels=[channel], scale=0.0)
            sync(device)
            t = time.perf_counter()
            evaluate(model, batches, spec, start)
            sync(device)
            times.append(time.perf_counter() - t)
    return times


def depth_adjusted(arch, sites, scored: list[dict], probe: list[float]) -> dict | None:
    """Full leave-one-out time with a per-pass cost linear in the layers it runs (a + b * (n - layer))."""
    points: dict[int, list[float]] = {}
    for row in scored:
        points.setdefault(row["layer"], []).append(row["s"])
    if probe:
        points.setdefault(arch.n_layers - 1, []).extend(probe)
    if not points:
        return None
    xs = [arch.n_layers - layer for layer in points]  # layers each pass runs
    ys = [sum(v) / len(v) for v in points.values()]
    if len(xs) == 1:
        slope, icpt = 0.0, ys[0]
    else:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        icpt = my - slope * mx
    per_pass = {layer: max(icpt + slope * (arch.n_layers - layer), 0.0) for layer in range(arch.n_layers)}
    return {
        "seconds_per_pass_by_layer": per_pass,
        "all_sites_seconds": sum(per_pass[layer] * arch.site_width(s) for layer in per_pass for s in sites),
        "mixer_out_seconds": sum(per_pass[layer] * arch.site_width("mixer_out") for layer in per_pass),
    }


def atomic_write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def hms(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def find_label(doc: dict) -> str:
    """find's method, with its options where they are not find's defaults, and the block screen's pairs
    screened when it ran (``--blocks N``)."""
    f = doc["find"]
    method = doc["args"]["method"]
    label = method
    top, choice = f.get("validate_top", 1), f.get("validate_choice", "gain")  # older records: 1, gain
    if (top, choice) != default_validation(method):
        label += f", --validate-top {top}" + (f" --validate-choice {choice}" if top > 1 else "")
    if f.get("max_scale", 8) != 8:
        label += f", --max-scale {f['max_scale']}"
    grow = f.get("grow", 0)  # a record from before grow had none, and did not grow
    if grow != default_grow(method):
        label += f", --grow {grow}"
    if f.get("blocks"):
        label += f", --blocks {f['blocks']}: {f['block_pairs_screened']} pairs screened"
    narrow, floor = f.get("narrow", 0), f.get("narrow_floor", 0)  # a record from before the floor had none
    if narrow != default_narrow(method):
        label += f", --narrow {narrow}"
    if narrow and floor != NARROW_FLOOR:
        label += f", --narrow-floor {floor:g}"
    return label


def narrow_row(doc: dict) -> tuple[str, str] | None:
    """The narrow screen's table row where it ran: the pairs it evaluated, of the narrow sites' pairs."""
    f = doc["find"]
    if not f.get("narrow"):
        return None
    of = f" of {f['narrow_pairs']}" if "narrow_pairs" in f else ""
    floor = f" with a restoring scale >= {f['narrow_floor']:g}" if f.get("narrow_floor") else ""
    return (
        f"find: narrow screen (sites <= {f['narrow']} channels)",
        f"{f['narrow_pairs_screened']}{of} pairs screened{floor}",
    )


def table(doc: dict) -> str:
    f, loo, ext = doc["find"], doc["leave_one_out"], doc["extrapolated"]
    adj = ext.get("depth_adjusted") or {}
    rows = [
        ("device", f"{doc['device']} ({doc['dtype']}); kernels: {doc['kernels']['path']}"),
        ("model", f"{doc['model']['layers']} layers x {doc['model']['hidden']}, random weights"),
        (
            "calibration",
            f"{doc['data']['docs']} x {doc['data']['length']} tokens, {doc['data']['batches']} batches",
        ),
        ("unsteered pass (warm)", f"{doc['warmup']['pass_seconds']:.2f} s"),
        (f"**find ({find_label(doc)}, all sites)**", f"**{f['seconds']:.1f} s**"),
        (
            "find: batches through last layer / layer 0",
            f"{f['batches_last_layer']} / {f['batches_first_layer']}",
        ),
        ("find: sweep points / verified channels", f"{f['sweep_points']} / {f['verified_channels']}"),
        *filter(None, [narrow_row(doc)]),
        ("find: chosen", f"layer {f['chosen'].get('layer')} {f['chosen'].get('site')}"),
        ("leave-one-out: budget", f"{loo['budget_seconds']:.1f} s (ran {loo['seconds']:.1f} s)"),
        (
            "leave-one-out: channels scored",
            f"{loo['channels_scored']} (last: layer {loo['last_layer']} {loo['last_site']})",
        ),
        ("leave-one-out: seconds per channel", f"{loo['seconds_per_channel']:.3f} s"),
        ("channels, all (layer, site) pairs", f"{doc['channels']['total']:,}"),
        ("channels, mixer_out only", f"{doc['channels']['mixer_out']:,}"),
        ("full leave-one-out, all sites (extrapolated)", hms(ext["all_sites_seconds"])),
        ("full leave-one-out, mixer_out only (extrapolated)", hms(ext["mixer_out_seconds"])),
        (
            "ratio full LOO / find (all sites; mixer_out)",
            f"{ext['ratio_all']:,.0f}x; {ext['ratio_mixer_out']:,.0f}x",
        ),
    ]
    if adj:
        rows += [
            ("depth-adjusted full LOO, all sites", hms(adj["all_sites_seconds"])),
            ("depth-adjusted full LOO, mixer_out only", hms(adj["mixer_out_seconds"])),
            (
                "depth-adjusted ratio (all sites; mixer_out)",
                f"{adj['ratio_all']:,.0f}x; {adj['ratio_mixer_out']:,.0f}x",
            ),
        ]
    return "\n".join(["| quantity | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import transformers

    from lm_eval_ssmsteer.finder.methods import evaluate
    from lm_eval_ssmsteer.finder.search import find
    from lm_eval_ssmsteer.mamba.arch import describe_model
    from lm_eval_ssmsteer.mamba.sites import SITES

    device = args.device
    model = build_model(args)
    arch = describe_model(model)
    data = make_data(args)
    validation = make_data(args, args.seed + 1)
    batches = [(ids.to(device), labels.to(device)) for ids, labels in data.batches()]
    sites = list(SITES)
    total = sum(arch.site_width(s) for s in sites) * arch.n_layers
    mixer_total = arch.site_width("mixer_out") * arch.n_layers
    kernels = kernel_check(model, batches, device)
    print(f"kernels: {kernels}", flush=True)

    with fast_scan(device):  # warm-up: CUDA initialisation, allocator, kernel loading
        evaluate(model, batches)
        sync(device)
        t = time.perf_counter()
        base = evaluate(model, batches)
        sync(device)
        pass_seconds = time.perf_counter() - t
    print(f"unsteered pass: {pass_seconds:.2f} s, loss {base.loss:.3f}", flush=True)

    counter = PassCounter(model)
    sync(device)
    t = time.perf_counter()
    result = find(
        model,
        data,
        method=args.method,
        blocks=args.blocks,
        narrow=args.narrow,
        narrow_floor=args.narrow_floor,
        validate_top=args.validate_top,
        validate_choice=args.validate_choice,
        max_scale=args.max_scale,
        grow=args.grow,
        progress=False,
        validation=validation,
    )
    sync(device)
    find_seconds = time.perf_counter() - t
    counter.remove()
    scores = result.scores
    chosen = scores.get("chosen", {})
    verified = scores.get("verified", {})
    verified_channels = sum(len(gains) for pair in verified.values() for gains in pair.values())
    print(f"find: {find_seconds:.1f} s, chosen {chosen}", flush=True)

    budget = find_seconds if args.budget_seconds is None else args.budget_seconds
    loo = leave_one_out(model, batches, arch, sites, budget, device, not args.no_progress)
    probe = probe_last_layer(model, batches, arch, args.probe_passes, device)
    n_scored = len(loo["scored"])
    per_channel = loo["seconds"] / n_scored
    adjusted = depth_adjusted(arch, sites, loo["scored"], probe)
    if adjusted:
        adjusted["ratio_all"] = adjusted["all_sites_seconds"] / find_seconds
        adjusted["ratio_mixer_out"] = adjusted["mixer_out_seconds"] / find_seconds

    doc = {
        "benchmark": "find_gpu",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "args": vars(args),
        "device": torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "dtype": args.dtype,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            **kernels["versions"],
        },
        "kernels": kernels,
        "model": {
            "layers": arch.n_layers,
            "hidden": arch.d_model,
            "d_inner": arch.d_inner,
            "state": arch.d_state,
            "vocab": args.vocab,
            "weights": f"random (seed {args.seed})",
        },
        "data": {
            "docs": args.docs,
            "length": args.length,
            "answer_tokens": args.answer_tokens,
            "batches": len(batches),
            "sha256": data.sha256,
        },
        "warmup": {"pass_seconds": pass_seconds, "unsteered_loss": base.loss},
        "find": {
            "seconds": find_seconds,
            "sites": sites,
            "method": args.method,
            "blocks": args.blocks,
            "narrow": args.narrow,
            "narrow_floor": args.narrow_floor if args.narrow else None,
            "validate_top": args.validate_top,
            "validate_choice": args.validate_choice,
            "max_scale": args.max_scale,
            "grow": args.grow,
            "grown": scores.get("raw", {}).get("grow"),
            "block_pairs_screened": len(scores.get("raw", {}).get("blocks", {}).get("best_loss", {})),
            "narrow_pairs_screened": len(scores.get("raw", {}).get("narrow", {}).get("best", {})),
            "narrow_pairs": scores.get("raw", {}).get("narrow", {}).get("pairs", 0),
            "batches_first_layer": counter.first,
            "batches_last_layer": counter.last,
            "passes_equivalent": counter.last / len(batches),
            "sweep_points": len(scores.get("sweep", [])),
            "verified_channels": verified_channels,
            "pairs_scored": len(scores.get("pairs", {})),
            "chosen": chosen,
            "calibration_loss": {"unsteered": result.base.loss, "steered": result.best.loss},
            "validation": scores.get("validation"),
        },
        "leave_one_out": {
            "budget_seconds": budget,
            "seconds": loo["seconds"],
            "channels_scored": n_scored,
            "seconds_per_channel": per_channel,
            "last_layer": loo["scored"][-1]["layer"],
            "last_site": loo["scored"][-1]["site"],
            "order": "mixer_out layer 0..n-1, then the other sites layer by layer; scale 0, from LayerInputs",
            "probe_last_layer_seconds": probe,
            "scored": loo["scored"],
        },
        "channels": {
            "total": total,
            "mixer_out": mixer_total,
            "per_site": {s: arch.site_width(s) for s in sites},
        },
        "extrapolated": {
            "all_sites_seconds": per_channel * total,
            "mixer_out_seconds": per_channel * mixer_total,
            "ratio_all": per_channel * total / find_seconds,
            "ratio_mixer_out": per_channel * mixer_total / find_seconds,
            "depth_adjusted": adjusted,
        },
        "acceptance": {"find_under_120_s": find_seconds < 120},
    }
    print()
    print(table(doc))
    if args.out:
        atomic_write_json(Path(args.out), doc)
        print(f"\nwrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
    sys.exit(0)
