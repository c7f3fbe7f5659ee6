"""``ssmsteer spec``: list presets, print a spec with its hash, check a spec against a model, describe
a model's layers (which hold a Mamba mixer, and the sites and widths a spec can address in each).

``check`` loads the model named by --model, else the one the spec's ``model`` block names (``name``: a
shipped short name, a local folder or a Hugging Face hub id). A hub id that is not in the local cache
fails at once when the hub cannot be reached (HF_HUB_OFFLINE set, or its host does not answer).
"""

from __future__ import annotations

import argparse
import json


def _check(spec, given: str | None) -> None:
    from lm_eval_ssmsteer.loading import ModelNotFoundError, describe_pretrained, shipped_models
    from lm_eval_ssmsteer.spec import SpecError
    from lm_eval_ssmsteer.steering.plan import resolve

    named = (spec.model or {}).get("name")
    if given is None and named is None:
        raise SpecError(
            "the spec names no model (its 'model' block has no 'name'); pass --model: a shipped model "
            f"({', '.join(shipped_models())}), a local folder or a hub id"
        )
    model, named_by = (given, "--model") if given is not None else (named, "the spec's model.name")
    if given is None:
        print(f"model: {model} (the spec's model.name)")
    try:
        arch = describe_pretrained(model, field=named_by)
    except ModelNotFoundError as exc:
        raise SpecError(str(exc)) from None
    plans = resolve(spec, arch)
    print(f"ok: {len(plans)} (layer, site) interventions fit {model}")


def describe_layers(model) -> list[str]:
    """One line per layer: what it holds and, for a Mamba layer, every site with its width."""
    from lm_eval_ssmsteer.mamba.arch import ARCHITECTURES, describe_model, layer_kind
    from lm_eval_ssmsteer.mamba.sites import site_names

    info = describe_model(model)
    refused = dict(info.refused_sites)
    arch = ARCHITECTURES[info.architecture]
    steerable = ", ".join(map(str, info.steerable_layers))
    lines = [
        f"{info.architecture} ({arch.causal_lm}): {info.n_layers} layers, {info.family} mixers, "
        f"Mamba layers {steerable}"
    ]
    sites = ", ".join(
        f"{site} refused" if site in refused else f"{site} {info.site_width(site)}" for site in site_names()
    )
    for i in range(info.n_layers):
        kind = layer_kind(model, i)
        what = sites if i in info.steerable_layers else f"no Mamba mixer: residual {info.d_model} only"
        lines.append(f"layer {i}: {kind:<15} {what}")
    lines.extend(f"{site} refused: {why}" for site, why in refused.items())
    return lines


def _describe(given: str | None) -> None:
    from transformers import AutoConfig

    from lm_eval_ssmsteer.loading import ModelNotFoundError, prepare_pretrained
    from lm_eval_ssmsteer.mamba.arch import skeleton
    from lm_eval_ssmsteer.spec import SpecError

    if given is None:
        raise SpecError("ssmsteer spec describe needs --model: a shipped model, a local folder or a hub id")
    try:
        path, _ = prepare_pretrained(given, field="--model")
    except ModelNotFoundError as exc:
        raise SpecError(str(exc)) from None
    for line in describe_layers(skeleton(AutoConfig.from_pretrained(path))):
        print(line)


def _run(args: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.mamba.arch import UnsupportedModelError
    from lm_eval_ssmsteer.spec import PRESETS, SpecError, load_spec

    if args.action == "presets":
        for name, doc in PRESETS.items():
            print(f"{name}: {json.dumps(doc['interventions'])}")
        return 0
    if args.action == "describe":
        try:
            _describe(args.model)
        except (SpecError, UnsupportedModelError, OSError) as exc:
            print(f"error: {exc}")
            return 2
        return 0
    if not args.spec:
        print("ssmsteer spec show|check needs a spec: a preset name, a JSON file, or inline JSON")
        return 2
    try:
        spec = load_spec(args.spec)
        if args.action == "check":
            _check(spec, args.model)
    except (SpecError, ValueError, OSError) as exc:
        print(f"error: {exc}")
        return 2
    if args.action == "show":
        print(spec.to_json())
    print(f"sha256: {spec.sha256}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "spec",
        help="list presets, show a steering spec and its hash, check it against a model, describe a model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("presets", "show", "check", "describe"))
    p.add_argument("spec", nargs="?", help="preset name, spec JSON file, or inline JSON")
    p.add_argument(
        "--model",
        help="model for `check` (default: the spec's model.name) and `describe`: shipped short name, local "
        "folder or hub id",
    )
    p.set_defaults(func=_run)
