"""Resolving and loading Mamba-family models: HF ids, local folders, shipped reference models by short
name, and native mamba-ssm checkpoints (converted once to the equivalent transformers format)."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"


def shipped_models() -> dict[str, Path]:
    """Short name -> folder of every reference model shipped inside the package."""
    if not MODELS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(MODELS_DIR.iterdir()) if (p / "config.json").is_file()}


def resolve_model_path(pretrained: str) -> str:
    """A shipped model's short name becomes its folder; anything else (HF id, path) is returned as is."""
    shipped = shipped_models()
    if pretrained in shipped:
        return str(shipped[pretrained])
    return pretrained
