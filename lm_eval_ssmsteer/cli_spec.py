"""``ssmsteer spec``: list presets, print a spec with its hash, check a spec against a model.

``check`` loads the model named by --model, else the one the spec's ``model`` block names (``name``: a
shipped short name, a local folder or a Hugging Face hub id). A hub id that is not in the local cache
fails at once when the hub cannot be reached (HF_HUB_OFFLINE set, or its host does not answer).
"""

from __future__ import annotations

import argparse
import json
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

HUB_PROBE_SECONDS = 3.0


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached now, or None. transformers, left to find out, retries
    for about 50 s before it fails."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(constants.ENDPOINT)
    if url.scheme in urllib.request.getproxies():
        return None  # reached through a proxy: a direct connection proves nothing
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError:
        return f"{url.hostname} cannot be reached"
    return None


def _loadable(model: str, named_by: str) -> str:
    """What to load for ``model``: itself, or its cached snapshot folder when the hub cannot be reached;
    a hub id neither reachable nor cached is refused in one sentence."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from lm_eval_ssmsteer.loading import shipped_models
    from lm_eval_ssmsteer.spec import SpecError

    if model in shipped_models() or Path(model).exists():
        return model
    shipped = ", ".join(shipped_models())
    try:
        validate_repo_id(model)
    except HFValidationError:
        raise SpecError(
            f"{named_by} {model!r} is not a shipped model ({shipped}), an existing folder or a hub id"
        ) from None
    why = _hub_unreachable()
    if why is None:
        return model
    cached = try_to_load_from_cache(model, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    raise SpecError(
        f"{named_by} {model!r} is a Hugging Face hub id (not a shipped model or a local folder), the hub "
        f"is offline ({why}) and the model is not in the local cache: pass --model a local folder that "
        "holds its config.json"
    )


def _check(spec, given: str | None) -> None:
    from transformers import AutoConfig

    from lm_eval_ssmsteer.loading import prepare_pretrained, shipped_models
    from lm_eval_ssmsteer.sites import describe_config, resolve
    from lm_eval_ssmsteer.spec import SpecError

    named = (spec.model or {}).get("name")
    if given is None and named is None:
        raise SpecError(
            "the spec names no model (its 'model' block has no 'name'); pass --model: a shipped model "
            f"({', '.join(shipped_models())}), a local folder or a hub id"
        )
    model, named_by = (given, "--model") if given is not None else (named, "the spec's model.name")
    if given is None:
        print(f"model: {model} (the spec's model.name)")
    path, _ = prepare_pretrained(_loadable(model, named_by))
    plans = resolve(spec, describe_config(AutoConfig.from_pretrained(path)))
    print(f"ok: {len(plans)} (layer, site) interventions fit {model}")


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
        help="list presets, show a steering spec and its hash, check it against a model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("presets", "show", "check"))
    p.add_argument("spec", nargs="?", help="preset name, spec JSON file, or inline JSON")
    p.add_argument(
        "--model",
        help="model for `check`: shipped short name, local folder or hub id (default: the spec's model.name)",
    )
    p.set_defaults(func=_run)
