"""``ssmsteer interpret attention|latim|knockout``: draw the maps of one input and write them as PNG,
NPZ and JSON under --out."""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

import torch

from lm_eval_ssmsteer.interpret.attention import hidden_attention
from lm_eval_ssmsteer.interpret.capture import (
    capture_layers,
    check_layers,
    check_mamba_layers,
    check_positions,
    layer_window,
)
from lm_eval_ssmsteer.interpret.knockout import (
    FEATURES,
    KnockoutSpec,
    check_features,
    knockout_effect,
    next_token_probs,
)
from lm_eval_ssmsteer.interpret.latim import METHODS, latim_maps, rollout
from lm_eval_ssmsteer.interpret.output import save_heatmap, save_json, save_lines, save_npz, token_labels
from lm_eval_ssmsteer.mamba.arch import describe_model, family_of_mixer, mamba_mixers
from lm_eval_ssmsteer.mamba.mixer_math import mixer_internals

PAPER_WINDOW = 9  # layers per knockout window in the paper's Figure 6; capped at the model's depth


def parse_indices(text: str, what: str) -> list[int]:
    """ "0,3-5,-1" -> [0, 3, 4, 5, -1]: comma-separated indices and inclusive ranges a-b (0 <= a <= b)."""
    indices: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        span = re.fullmatch(r"(\d+)-(\d+)", part)
        if span and int(span[1]) <= int(span[2]):
            indices.extend(range(int(span[1]), int(span[2]) + 1))
        elif re.fullmatch(r"-?\d+", part):
            indices.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"{what} {text!r}: expected indices and ranges like 0,3-5,-1")
    return indices


def _index_list(what: str):
    return lambda text: parse_indices(text, what)


def _feature_set(name: str) -> str:
    try:
        return check_features(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="shipped model name, HF id or local folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the input text")
    source.add_argument("--text-file", type=Path, help="file holding the input text")
    parser.add_argument("--layers", type=_index_list("--layers"), help="e.g. 0,2-4,-1 (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--memory-mb", type=int, default=512, help="budget for one chunk of target rows (default: 512)"
    )


def _analysis_parser(analyses, name: str, help: str, library_function) -> argparse.ArgumentParser:
    """An analysis's parser; its --help describes the analysis with the docstring of its library module."""
    return analyses.add_parser(
        name,
        help=help,
        description=inspect.getmodule(library_function).__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "interpret",
        help="hidden attention, LaTIM token maps and knockout for Mamba-1/Mamba-2 models and hybrids",
        description="Interpret one input: hidden attention, LaTIM token-to-token maps, knockout.",
    )
    analyses = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    attention = _analysis_parser(analyses, "attention", "hidden attention maps per layer", hidden_attention)
    _add_common(attention)
    attention.add_argument(
        "--aggregate",
        nargs="+",
        choices=("mean", "norm"),
        default=["mean", "norm"],
        help="mean: mean of α over channels/heads; norm: ‖α_ij ⊙ v_j‖ over channels",
    )
    attention.add_argument(
        "--per-feature",
        action="store_true",
        help="also store the per-channel (Mamba-1) / per-head (Mamba-2) matrices in the NPZ",
    )
    attention.set_defaults(func=run_attention)

    latim = _analysis_parser(
        analyses, "latim", "LaTIM token-to-token maps per layer, and their rollout", latim_maps
    )
    _add_common(latim)
    latim.add_argument("--scores", nargs="+", choices=METHODS, default=list(METHODS))
    latim.add_argument("--rollout", action="store_true", help="also chain the block maps across the layers")
    latim.set_defaults(func=run_latim)

    knock = _analysis_parser(
        analyses, "knockout", "block sources -> targets in windows of layers", knockout_effect
    )
    _add_common(knock)
    knock.add_argument("--sources", type=_index_list("--sources"), required=True, help="e.g. 3-7")
    knock.add_argument("--targets", type=_index_list("--targets"), default=[-1], help="default: -1")
    knock.add_argument(
        "--window-size",
        type=int,
        help=f"layers per window (default: {PAPER_WINDOW}, the paper's, or every layer of a shallower model)",
    )
    knock.add_argument(
        "--window-start",
        type=int,
        help="one window from this layer (default: every window; --layers restricts the starts)",
    )
    knock.add_argument(
        "--features",
        nargs="+",
        type=_feature_set,
        choices=FEATURES,
        default=["all"],
        metavar="NAME",
        help="one knockout per value: "
        + "; ".join(f"{name}: {meaning}" for name, meaning in FEATURES.items())
        + " (default: all)",
    )
    knock.add_argument("--position", type=int, default=-1, help="prediction position (default: -1)")
    knock.add_argument(
        "--target-token-id",
        type=int,
        help="token whose probability is measured (default: the unintervened prediction)",
    )
    knock.set_defaults(func=run_knockout)


def _load(args: argparse.Namespace, mamba_only: bool = True):
    """(model, tokenizer, Mamba mixers by layer, input ids, the chosen layers, metadata). The layers are
    decoder layers; with ``mamba_only`` (maps of Mamba mixers) they must hold one, default every one."""
    from lm_eval_ssmsteer.loading import load_model

    text = args.text if args.text is not None else args.text_file.read_text()
    if not text:
        raise ValueError("the input text is empty")
    model, tokenizer = load_model(args.model, device=args.device, field="--model")
    mixers = mamba_mixers(model)
    n_layers = len(model.base_model.layers)
    input_ids = tokenizer(text, return_tensors="pt").input_ids.to(args.device)
    if mamba_only:
        layers = check_mamba_layers(model, args.layers)
    else:
        layers = check_layers(args.layers if args.layers is not None else range(n_layers), n_layers)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": args.model,
        "architecture": type(model).__name__,
        "mixer": family_of_mixer(next(iter(mixers.values()))),
        "n_layers": n_layers,
        "mamba_layers": list(mixers),
        "tokens": token_labels(tokenizer, input_ids[0].tolist()),
        "token_ids": input_ids[0].tolist(),
    }
    return model, tokenizer, mixers, input_ids, layers, meta


def _main(run):
    def wrapped(args: argparse.Namespace) -> int:
        try:
            written = run(args)
        except ValueError as exc:
            print(f"ssmsteer interpret {args.analysis}: error: {exc}", file=sys.stderr)
            return 2
        for path in written:
            print(path)
        return 0

    return wrapped


def _save_map(args, meta: dict, arrays: dict, key: str, matrix: torch.Tensor, title: str) -> Path:
    """Keep the map for the NPZ under ``key`` and draw it as ``<analysis>_<key>.png``."""
    arrays[key] = matrix
    path = args.out / f"{args.analysis}_{key}.png"
    return save_heatmap(matrix, meta["tokens"], path, f"{args.model} {title}")


def _save_arrays(args, meta: dict, arrays: dict, layers: tuple[int, ...]) -> list[Path]:
    """``<analysis>.npz`` with every map and ``<analysis>.json`` with the tokens and the keys."""
    listing = {**meta, "layers": list(layers), "keys": sorted(arrays)}
    stem = args.out / args.analysis
    return [save_npz(stem.with_suffix(".npz"), arrays), save_json(stem.with_suffix(".json"), listing)]


@_main
def run_attention(args: argparse.Namespace) -> list[Path]:
    model, _, mixers, input_ids, layers, meta = _load(args)
    captured = capture_layers(model, input_ids, layers)
    arrays, written = {}, []
    budget = args.memory_mb * 2**20
    for layer in layers:
        internals = mixer_internals(mixers[layer], captured[layer].mixer_input)
        for aggregate in args.aggregate:
            matrix = hidden_attention(internals, aggregate, budget)
            title = f"layer {layer}: hidden attention ({aggregate})"
            written.append(_save_map(args, meta, arrays, f"layer{layer}_{aggregate}", matrix, title))
        if args.per_feature:
            arrays[f"layer{layer}_per_feature"] = hidden_attention(internals, "none", budget)
    return written + _save_arrays(args, meta, arrays, layers)


@_main
def run_latim(args: argparse.Namespace) -> list[Path]:
    model, _, mixers, input_ids, layers, meta = _load(args)
    if args.rollout and describe_model(model).mamba_layers is not None:
        raise ValueError(
            "--rollout chains the Mamba layers' block maps, and a hybrid's attention layers have none: "
            "run without --rollout for per-layer maps"
        )
    if args.rollout and list(layers) != list(range(layers[0], layers[-1] + 1)):
        raise ValueError(f"--rollout chains consecutive layers; got layers {list(layers)}")
    captured = capture_layers(model, input_ids, layers)
    arrays, written, block_maps = {}, [], {score: [] for score in args.scores}
    for layer in layers:
        internals = mixer_internals(mixers[layer], captured[layer].mixer_input)
        block_input = captured[layer].block_input if args.rollout else None
        maps = latim_maps(internals, tuple(args.scores), block_input, args.memory_mb * 2**20)
        for score in args.scores:
            title = f"layer {layer}: LaTIM {score}"
            written.append(_save_map(args, meta, arrays, f"layer{layer}_{score}", maps[score], title))
            if args.rollout:
                block_maps[score].append(maps[f"{score}_block"])
    if args.rollout:
        for score, chain in block_maps.items():
            title = f"layers {layers[0]}-{layers[-1]}: LaTIM {score} rollout"
            written.append(_save_map(args, meta, arrays, f"rollout_{score}", rollout(chain), title))
    return written + _save_arrays(args, meta, arrays, layers)


@_main
def run_knockout(args: argparse.Namespace) -> list[Path]:
    model, tokenizer, _, input_ids, layers, meta = _load(args, mamba_only=False)
    n_layers, length = meta["n_layers"], input_ids.shape[1]
    check_positions(args.sources, length, "source")
    check_positions(args.targets, length, "target")
    (position,) = check_positions([args.position], length, "prediction")
    size = args.window_size
    if size is None:
        size = min(PAPER_WINDOW, n_layers)
        print(f"window: {size} layers (the model has {n_layers}; the paper's default is {PAPER_WINDOW})")
    if args.window_start is not None:
        windows = [layer_window(args.window_start, size, n_layers)]
    else:
        layer_window(0, size, n_layers)  # refuses an empty or too large window
        windows = [layer_window(s, size, n_layers) for s in layers if s + size <= n_layers]
    base_probs = next_token_probs(model, input_ids, position)
    results = []
    for features in args.features:
        for window in windows:
            spec = KnockoutSpec(window, tuple(args.sources), tuple(args.targets), features)
            effect = knockout_effect(model, input_ids, spec, args.target_token_id, position, base_probs)
            results.append({"spec": spec.to_dict(), **effect.to_dict()})
    feature_sets = {name: FEATURES[name] for name in args.features}  # what each spec's "features" means
    target = results[0]["target_token"] if results else None  # the same in every result
    target_text = None if target is None else tokenizer.decode([target])
    record = {**meta, "target_token_text": target_text, "feature_sets": feature_sets, "results": results}
    written = [save_json(args.out / "knockout.json", record)]
    if len(windows) > 1:
        starts = [w[0] for w in windows]
        series = {
            f"features={f}": [r["relative_change_pct"] for r in results if r["spec"]["features"] == f]
            for f in args.features
        }
        title = f"{args.model}: knockout {args.sources} -> {args.targets}, windows of {size}"
        written.append(
            save_lines(
                starts,
                series,
                args.out / "knockout.png",
                title,
                "first layer of the window",
                "target probability change (%)",
            )
        )
    if target is not None:
        given = "the unintervened prediction" if args.target_token_id is None else "--target-token-id, read"
        print(f"target token: id {target} {target_text!r} ({given} at position {position})")
    for r in results:
        print(
            f"layers {r['spec']['layers'][0]}-{r['spec']['layers'][-1]} features={r['spec']['features']}: "
            f"p={r['prob_knocked']:.4f} (base {r['prob_base']:.4f}, {r['relative_change_pct']:+.1f}%), "
            f"argmax hit {r['argmax_hit_knocked']}"
        )
    return written
