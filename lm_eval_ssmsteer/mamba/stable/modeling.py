"""Stable-Mamba: a Mamba-1 mixer whose channels have several Δ gates, one per group of state dimensions.

Mamba-1 updates all N state dimensions of channel e with one input-dependent step Δ_t[e]: a token that
opens the gate (large Δ) to write also decays every state of that channel at once, so long-range memory
and fast updates compete for the same gate (the single-timescale bottleneck of the source paper's
diagnosis). Here the N state dimensions are split into G interleaved groups g (n mod G = g), each with
its own gate:

    [r; B_t; C_t] = x_proj(v_t)                              r: (b, l, R); B, C: (b, l, N)
    Δ_t^g = softplus(W_g r_t + b_g)                          (b, l, d), g = 0..G-1, b_g in timescale band g
    h_t[e, n] = exp(Δ_t^g[e] A[e, n]) h_{t-1}[e, n] + Δ_t^g[e] B_t[n] v_t[e]     for n in group g
    y_t = Σ_g Σ_{n in g} C_t[n] h_t[·, n] + D ⊙ v_t;   out_t = out_proj(y_t ⊙ SiLU(z_t))

Everything else (in_proj, causal conv, x_proj, A, D, gate, out_proj, the block and the LM) is Mamba-1's.
The scan of group g is transformers' own ``mamba_selective_scan`` called with B and C zeroed outside
the group: those states receive nothing and read nothing, so the G calls add up to the grouped
recurrence exactly. It costs G scans of width N instead of one (a grouped kernel would not), but it
keeps the module-level scan functions the steering hooks swap: ``delta`` scales every gate of a
channel, ``B``/``C`` the shared input/readout vectors, ``ssm_out``/``gate`` the summed output (each
call's share is linear in both). Strictly causal: a causal conv and forward recurrences only.

Parameters beyond a Mamba-1 of the same width: (G-1)·(R+1)·d per layer (the extra rows of dt_proj).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.models.mamba.modeling_mamba import (
    MambaBlock,
    MambaForCausalLM,
    MambaMixer,
    MambaModel,
    MambaPreTrainedModel,
    MambaRMSNorm,
    apply_mask_to_padding_states,
    causal_conv1d_fn,
    causal_conv1d_update,
    mamba_inner_fn,  # noqa: F401  (never called: the steering hooks swap it with the two scans)
    mamba_selective_scan,
    mamba_selective_state_update,
)

from lm_eval_ssmsteer.mamba.compat import cached_states, pop_cache, records_past
from lm_eval_ssmsteer.mamba.stable.configuration import StableMambaConfig


def timescale_bands(config: StableMambaConfig) -> list[tuple[float, float]]:
    """(low, high) initial Δ per gate: [timescale_min, time_step_max] in G log-equal bands, fastest first."""
    top, bottom = math.log(config.time_step_max), math.log(config.timescale_min)
    width = (top - bottom) / config.num_timescales
    return [
        (math.exp(top - (g + 1) * width), math.exp(top - g * width)) for g in range(config.num_timescales)
    ]


class StableMambaMixer(MambaMixer):
    """MambaMixer with G Δ gates per channel (dt_proj has G·d outputs); see the module docstring."""

    def __init__(self, config: StableMambaConfig, layer_idx: int, initialize_mixer_weights: bool = True):
        super().__init__(config, layer_idx, initialize_mixer_weights=False)
        self.num_timescales = config.num_timescales
        self.dt_proj = nn.Linear(self.time_step_rank, self.num_timescales * self.intermediate_size, bias=True)
        if initialize_mixer_weights and self.dt_proj.weight.device.type != "meta":
            self.init_mamba_weights()

    @torch.no_grad()
    def init_mamba_weights(self):
        A = torch.arange(1, self.ssm_state_size + 1, dtype=torch.float32, device=self.A_log.device)[None, :]
        init.copy_(self.A_log, torch.log(A.expand(self.intermediate_size, -1).contiguous()))
        init.ones_(self.D)
        dt_init_std = self.config.time_step_rank**-0.5 * self.config.time_step_scale
        if self.config.time_step_init_scheme == "constant":
            init.constant_(self.dt_proj.weight, dt_init_std)
        elif self.config.time_step_init_scheme == "random":
            init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        device = self.dt_proj.bias.device
        dt = torch.cat(
            [
                torch.exp(
                    torch.rand(self.intermediate_size, device=device) * (math.log(high) - math.log(low))
                    + math.log(low)
                )
                for low, high in timescale_bands(self.config)
            ]
        ).clamp(min=self.config.time_step_floor)
        init.copy_(self.dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def group_masks(self, device: torch.device) -> torch.Tensor:
        """(G, N) float: 1 where state dimension n belongs to gate g (n mod G = g)."""
        n = torch.arange(self.ssm_state_size, device=device)
        g = torch.arange(self.num_timescales, device=device)
        return (n[None, :] % self.num_timescales == g[:, None]).float()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.LongTensor | None = None,
        **kwargs,
    ):
        cache_params: Cache | None = pop_cache(kwargs)  # MambaBlock passes it as cache= or cache_params=
        seq_len = hidden_states.shape[1]
        dtype = hidden_states.dtype
        conv_state, recurrent_state = cached_states(cache_params, self.layer_idx)

        hidden_states = apply_mask_to_padding_states(hidden_states, attention_mask)
        x, gate = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (b, d, l) each

        # causal depthwise conv, as MambaMixer does it (one step from the cache when decoding)
        if conv_state is not None and seq_len == 1 and not records_past(cache_params, self.layer_idx):
            x = causal_conv1d_update(
                x, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation=self.activation
            )
        else:
            if cache_params is not None:
                x = cache_params.update_conv_state(x, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
            x = causal_conv1d_fn(
                x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation=self.activation, **kwargs
            )
            if cache_params is not None:
                x = x[:, :, -seq_len:]

        x = apply_mask_to_padding_states(x.transpose(1, 2), attention_mask)  # (b, l, d)
        r, B, C = torch.split(
            self.x_proj(x), [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1
        )
        # G × (b, d, l) pre-softplus Δ and G × (d,) biases
        time_steps = (self.dt_proj.weight @ r.transpose(1, 2)).chunk(self.num_timescales, dim=1)
        biases = self.dt_proj.bias.float().chunk(self.num_timescales)
        A = -torch.exp(self.A_log.float())  # (d, N)
        masks = self.group_masks(x.device)  # (G, N)
        u = x.transpose(1, 2)  # (b, d, l)

        if recurrent_state is not None and seq_len == 1:
            new_state = torch.zeros_like(recurrent_state)
            scan_output = 0
            for g, (dt, bias, mask) in enumerate(zip(time_steps, biases, masks, strict=True)):
                state = recurrent_state * mask  # (b, d, N), zero outside group g
                scan_output = scan_output + mamba_selective_state_update(
                    state,
                    u[..., 0],
                    dt[..., 0],
                    A,
                    B[:, 0] * mask,
                    C[:, 0] * mask,
                    self.D if g == 0 else None,
                    z=gate[..., 0],
                    dt_bias=bias,
                    dt_softplus=True,
                )
                new_state += state
            recurrent_state.copy_(new_state)
            scan_output = scan_output.unsqueeze(-1)
        else:
            output_final_state = cache_params is not None
            scan_output, final_state = 0, 0
            for g, (dt, bias, mask) in enumerate(zip(time_steps, biases, masks, strict=True)):
                result = mamba_selective_scan(
                    u,
                    dt,
                    A,
                    B.transpose(1, 2) * mask[:, None],
                    C.transpose(1, 2) * mask[:, None],
                    D=self.D.float() if g == 0 else None,
                    z=gate,
                    delta_bias=bias,
                    delta_softplus=True,
                    return_last_state=output_final_state,
                    use_mambapy=self.use_mambapy,
                    use_associative_scan=self.use_associative_scan,
                )
                if output_final_state:
                    result, last = result
                    final_state = final_state + last * mask
                scan_output = scan_output + result
            if output_final_state:
                cache_params.update_recurrent_state(final_state, self.layer_idx)

        return self.out_proj(scan_output.transpose(1, 2).to(dtype))


class StableMambaBlock(MambaBlock):
    def __init__(self, config: StableMambaConfig, layer_idx: int):
        super(MambaBlock, self).__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = MambaRMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = StableMambaMixer(config, layer_idx=layer_idx, initialize_mixer_weights=False)


class StableMambaPreTrainedModel(MambaPreTrainedModel):
    config: StableMambaConfig
    config_class = StableMambaConfig
    _no_split_modules = ["StableMambaBlock", "StableMambaMixer"]


class StableMambaModel(StableMambaPreTrainedModel, MambaModel):
    def __init__(self, config: StableMambaConfig):
        super(MambaModel, self).__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [StableMambaBlock(config, layer_idx=idx) for idx in range(config.num_hidden_layers)]
        )
        self.gradient_checkpointing = False
        self.norm_f = MambaRMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self._register_load_state_dict_pre_hook(self.load_hook)
        self.post_init()


class StableMambaForCausalLM(StableMambaPreTrainedModel, MambaForCausalLM):
    def __init__(self, config: StableMambaConfig):
        super(MambaForCausalLM, self).__init__(config)
        self.backbone = StableMambaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["StableMambaForCausalLM", "StableMambaModel", "StableMambaPreTrainedModel", "StableMambaMixer"]
