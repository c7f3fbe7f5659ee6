"""StableMambaConfig: a MambaConfig plus the number of Δ timescales per channel and the slowest one."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import MambaConfig


@strict
class StableMambaConfig(MambaConfig):
    r"""
    num_timescales (`int`, defaults to 2):
        Δ gates per channel, G. The state dimensions are split into G interleaved groups
        (n mod G), each updated with its own input-dependent Δ. G = 1 is Mamba-1.
    timescale_min (`float`, defaults to 1e-4):
        The smallest initial Δ. The log-range [timescale_min, time_step_max] is cut into G equal bands,
        gate 0 the fastest; each gate's bias starts log-uniform in its band.
    """

    model_type = "stable_mamba"

    num_timescales: int = 2
    timescale_min: float = 1e-4

    def __post_init__(self, **kwargs):
        if self.num_timescales < 1 or self.num_timescales > self.state_size:
            raise ValueError(
                f"num_timescales={self.num_timescales} must be between 1 and state_size={self.state_size}"
            )
        if not 0 < self.timescale_min < self.time_step_max:
            raise ValueError(
                f"timescale_min={self.timescale_min} must be positive and below "
                f"time_step_max={self.time_step_max}"
            )
        super().__post_init__(**kwargs)


__all__ = ["StableMambaConfig"]
