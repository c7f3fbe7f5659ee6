"""Stable-Mamba (docs/stable_mamba.md): importing this package registers it with transformers' Auto classes.

It imports torch and transformers, so the package root never imports it at start-up: the backend and
``loading`` do, and ``lm_eval_ssmsteer.StableMambaForCausalLM`` loads it lazily.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from lm_eval_ssmsteer.mamba.stable.configuration import StableMambaConfig
from lm_eval_ssmsteer.mamba.stable.modeling import StableMambaForCausalLM, StableMambaMixer, StableMambaModel


def register() -> None:
    """Make ``AutoConfig``/``AutoModelForCausalLM`` know model_type "stable_mamba" (idempotent)."""
    AutoConfig.register(StableMambaConfig.model_type, StableMambaConfig, exist_ok=True)
    AutoModelForCausalLM.register(StableMambaConfig, StableMambaForCausalLM, exist_ok=True)


register()

__all__ = ["StableMambaConfig", "StableMambaForCausalLM", "StableMambaMixer", "StableMambaModel", "register"]
