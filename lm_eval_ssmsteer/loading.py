"""Resolving and loading Mamba-family models: HF ids, local folders, shipped reference models by short
name, and native mamba-ssm checkpoints (converted once to the equivalent transformers format)."""

from __future__ import annotations

import os
import re
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
# huggingface_hub's repo id rule: `name` or `namespace/name`, each part word characters, `-` and `.`,
# starting and ending with a word character, no `--` or `..`, at most 96 characters in all
_HUB_PART = r"\w(?:[\w.-]*\w)?"
_HUB_ID = re.compile(rf"(?:{_HUB_PART}/)?{_HUB_PART}")
_HUB_ID_MAX = 96
HUB_PROBE_SECONDS = 3.0


class ModelNotFoundError(OSError):
    """``pretrained`` names no folder, shipped model or hub id. An OSError, like transformers' own error
    for a model it cannot find, so that callers handling that one handle this one too."""


def shipped_models() -> dict[str, Path]:
    """Short name -> folder of every reference model shipped inside the package."""
    if not MODELS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(MODELS_DIR.iterdir()) if (p / "config.json").is_file()}


def _looks_like_a_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
    )


def _is_hub_id(name: str) -> bool:
    return (
        len(name) <= _HUB_ID_MAX
        and _HUB_ID.fullmatch(name) is not None
        and "--" not in name
        and ".." not in name
    )


def check_model_name(pretrained: str, field: str = "pretrained") -> None:
    """Fail, before anything loads, on a name that is no existing folder, shipped model or well-formed
    hub id (a path-like name that does not exist is "no such folder"). ``field`` is how the user gave it."""
    if pretrained in shipped_models() or Path(pretrained).is_dir():
        return
    if Path(pretrained).exists():
        problem = "not a folder"
    elif _looks_like_a_path(pretrained):
        problem = "no such folder"
        if pretrained.startswith("~") and Path(pretrained).expanduser().is_dir():
            problem += " (~ is not expanded here: give the full path)"
    elif _is_hub_id(pretrained):
        return
    else:
        problem = "not a folder, a shipped model or a hub id"
    raise ModelNotFoundError(
        f"{field}={pretrained!r}: {problem}; allowed: an existing model folder, a shipped model "
        f"({_shipped_names()}) or a hub id 'name' or 'namespace/name'"
    )


def _shipped_names() -> str:
    return ", ".join(shipped_models()) or "none"


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached now, or None. transformers, left to find out, retries
    for about 50 s before it fails."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

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


def _hub_or_cache(name: str, field: str) -> str:
    """A hub id as ``from_pretrained`` should get it: itself while the hub answers, else the folder of
    its cached snapshot; neither fails at once (instead of transformers' ~50 s of retries)."""
    why = hub_unreachable()
    if why is None:
        return name
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    raise ModelNotFoundError(
        f"{field}={name!r}: a Hugging Face hub id that is not in the local cache, and the hub is offline "
        f"({why}); allowed offline: an existing model folder (with its config.json) or a shipped model "
        f"({_shipped_names()})"
    )


def resolve_model_path(pretrained: str) -> str:
    """A shipped model's short name becomes its folder; anything else (HF id, path) is returned as is."""
    shipped = shipped_models()
    if pretrained in shipped:
        return str(shipped[pretrained])
    return pretrained


# -- native mamba-ssm checkpoints -----------------------------------------------------------------
# A native checkpoint (state-spaces/mamba-130m, state-spaces/mamba2-130m, ...) is a config.json with
# d_model/n_layer/ssm_cfg and a pytorch_model.bin whose tensors are named like transformers' except
# for the embedding. It is converted once into a transformers folder, so that it runs through the
# same classes (and the same mamba-ssm kernels) as every other model.

NATIVE_TOKENIZER = "EleutherAI/gpt-neox-20b"


def is_native_config(config: dict) -> bool:
    return "d_model" in config and "n_layer" in config and "model_type" not in config


def _hf_config_from_native(native: dict):
    from transformers import Mamba2Config, MambaConfig

    ssm_cfg = dict(native.get("ssm_cfg") or {})
    layer = ssm_cfg.pop("layer", "Mamba1")
    vocab = native["vocab_size"]
    multiple = native.get("pad_vocab_size_multiple", 8)
    if vocab % multiple:
        vocab += multiple - vocab % multiple
    common = {
        "hidden_size": native["d_model"],
        "num_hidden_layers": native["n_layer"],
        "vocab_size": vocab,
        "residual_in_fp32": native.get("residual_in_fp32", True),
        "tie_word_embeddings": native.get("tie_embeddings", True),
        "pad_token_id": 0,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    if layer == "Mamba2":
        head_dim = ssm_cfg.get("headdim", 64)
        expand = ssm_cfg.get("expand", 2)
        return Mamba2Config(
            **common,
            state_size=ssm_cfg.get("d_state", 128),
            conv_kernel=ssm_cfg.get("d_conv", 4),
            expand=expand,
            head_dim=head_dim,
            num_heads=expand * native["d_model"] // head_dim,
            n_groups=ssm_cfg.get("ngroups", 1),
            chunk_size=ssm_cfg.get("chunk_size", 256),
        )
    return MambaConfig(
        **common,
        state_size=ssm_cfg.get("d_state", 16),
        conv_kernel=ssm_cfg.get("d_conv", 4),
        expand=ssm_cfg.get("expand", 2),
    )


def convert_native_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Write a transformers folder for the native mamba-ssm checkpoint in ``src`` (atomically)."""
    import json
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    src, dst = Path(src), Path(dst)
    native = json.loads((src / "config.json").read_text())
    config = _hf_config_from_native(native)
    weights = src / "pytorch_model.bin"
    if not weights.is_file():
        raise FileNotFoundError(
            f"{src}: a native mamba-ssm checkpoint needs pytorch_model.bin beside config.json"
        )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in state.items()}
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise ValueError(
            f"{src}: not a mamba-ssm checkpoint this loader understands "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.replace(dst)
    return dst


def _native_source(pretrained: str) -> Path | None:
    """The folder of a native checkpoint named by path or hub id, or None if it is not one."""
    import json

    local = Path(pretrained)
    if local.is_dir():
        cfg = local / "config.json"
        return local if cfg.is_file() and is_native_config(json.loads(cfg.read_text())) else None
    if local.exists() or pretrained.count("/") != 1:
        return None
    try:
        from huggingface_hub import hf_hub_download

        cfg_path = Path(hf_hub_download(pretrained, "config.json"))
    except Exception:
        return None  # not reachable or not a hub repo: let transformers report it
    if not is_native_config(json.loads(cfg_path.read_text())):
        return None
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(pretrained, allow_patterns=["config.json", "pytorch_model.bin"]))


def prepare_pretrained(
    pretrained: str, cache_dir: str | Path | None = None, field: str = "pretrained"
) -> tuple[str, bool]:
    """Resolve ``pretrained`` to something ``from_pretrained`` loads; returns (path_or_id, was_native).
    Errors (ModelNotFoundError) name the value as ``field``, the way the user gave it."""
    import hashlib

    check_model_name(pretrained, field)
    resolved = resolve_model_path(pretrained)
    if not Path(resolved).exists():
        resolved = _hub_or_cache(resolved, field)
    native = _native_source(resolved)
    if native is None:
        return resolved, False
    cache_root = Path(
        cache_dir or os.environ.get("SSMSTEER_CACHE", Path.home() / ".cache" / "lm_eval_ssmsteer")
    )
    key = hashlib.sha256(str(native.resolve()).encode()).hexdigest()[:16]
    dst = cache_root / "converted" / f"{native.name}-{key}"
    if not (dst / "config.json").is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        convert_native_checkpoint(native, dst)
    return str(dst), True


def describe_pretrained(pretrained: str, field: str = "pretrained"):
    """The shape of a model (``mamba.arch.ArchInfo``) from its config alone, no weights loaded: what a
    spec is checked against before anything runs. Errors name the value as ``field``."""
    from transformers import AutoConfig

    import lm_eval_ssmsteer.mamba.stable  # noqa: F401  (registers model_type "stable_mamba")
    from lm_eval_ssmsteer.mamba.arch import describe_config

    path, _ = prepare_pretrained(pretrained, field=field)
    return describe_config(AutoConfig.from_pretrained(path))


def load_model(pretrained: str, dtype: str = "float32", device: str = "cpu", field: str = "pretrained"):
    """(model, tokenizer) for any supported model name, in eval mode: the one loader of the library (the
    lm-eval backend hands ``prepare_pretrained``'s result to HFLM, which loads the same way). Errors name
    the value as ``field``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lm_eval_ssmsteer.mamba.stable  # noqa: F401  (registers model_type "stable_mamba")

    path, native = prepare_pretrained(pretrained, field=field)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    if model.device.type == "cpu":
        from lm_eval_ssmsteer.log_filters import drop_cpu_kernel_fallback

        drop_cpu_kernel_fallback()  # the kernels are CUDA-only: on the CPU their fallback is expected
    tokenizer = AutoTokenizer.from_pretrained(NATIVE_TOKENIZER if native else path)
    return model, tokenizer
