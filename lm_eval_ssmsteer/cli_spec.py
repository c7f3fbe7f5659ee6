"""``ssmsteer spec``: list presets, print a spec with its hash, check a spec against a model."""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.spec import PRESETS, SpecError, load_spec

    if args.action == "presets":
        for name, doc in PRESETS.items():
            print(f"{name}: {json.dumps(doc['interventions'])}")
        return 0
    if not args.spec:
        print("ssmsteer spec show|check needs a spec: a preset name, a JSON file, or inline JSON")
        return 2
    try:
        spec = load_spec(args.spec)
        if args.action == "check":
            from transformers import AutoConfig

            from lm_eval_ssmsteer.loading import prepare_pretrained
            from lm_eval_ssmsteer.sites import describe_config, resolve

            path, _ = prepare_pretrained(args.model)
            plans = resolve(spec, describe_config(AutoConfig.from_pretrained(path)))
            print(f"ok: {len(plans)} (layer, site) interventions fit {args.model}")
    except (SpecError, ValueError, OSError) as exc:
        print(f"error: {exc}")
        return 2
    if args.action == "show":
        print(spec.to_json())
    print(f"sha256: {spec.sha256}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "spec", help="list presets, show a steering spec and its hash, check it against a model"
    )
    p.add_argument("action", choices=("presets", "show", "check"))
    p.add_argument("spec", nargs="?", help="preset name, spec JSON file, or inline JSON")
    p.add_argument(
        "--model", default="state-spaces/mamba-130m-hf", help="model for `check` (HF id, path, short name)"
    )
    p.set_defaults(func=_run)
