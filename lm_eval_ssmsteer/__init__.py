"""Find and steer the activation bottlenecks of Mamba-family SSMs, measured through lm-evaluation-harness.

Kept import-light: a ``.pth`` start-up hook imports ``lm_eval_ssmsteer.lmeval._autoload`` in every Python
process, so this module must not import torch, transformers or lm_eval. The public API loads lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "SteeringSpec": "lm_eval_ssmsteer.spec",
    "Intervention": "lm_eval_ssmsteer.spec",
    "SpecError": "lm_eval_ssmsteer.spec",
    "load_spec": "lm_eval_ssmsteer.spec",
    "steer": "lm_eval_ssmsteer.steering",
    "describe_model": "lm_eval_ssmsteer.mamba.arch",
    "load_model": "lm_eval_ssmsteer.loading",
    "StableMambaConfig": "lm_eval_ssmsteer.mamba.stable",
    "StableMambaForCausalLM": "lm_eval_ssmsteer.mamba.stable",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lm_eval_ssmsteer' has no attribute {name!r}")


def _register_with_lm_eval() -> None:
    """Importing the package from user code makes the backend and tasks visible to lm_eval: now if
    lm_eval is already loaded, else when it is (the same watcher the ``.pth`` hook installs)."""
    import sys

    from lm_eval_ssmsteer.lmeval import _autoload  # noqa: F401  (installs the import watcher)

    if "lm_eval" in sys.modules or "lm_eval.api.registry" in sys.modules:
        from lm_eval_ssmsteer.lmeval import registration

        registration.register_if_loaded()


_register_with_lm_eval()
