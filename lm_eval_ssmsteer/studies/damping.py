"""Save a copy of a Mamba-1, Mamba-2 or hybrid model with random channels of one layer's site damped in its
weights (a hybrid: one of its Mamba layers, by decoder index).

A planted bottleneck for the finder's validation (docs/finder.md): ``count`` channels drawn with
``random.Random(seed)`` (never by a finder score) are multiplied by ``scale`` in the weights that write
them: mixer_out = ``out_proj`` rows, ssm_out = ``out_proj`` columns, B or C = ``x_proj`` rows (it has no
bias, so scaling its rows scales B or C exactly). Two plants are not a pure scale of the site: delta
moves the ``dt_proj`` bias so that Δ at a zero input is ``scale`` times its value (Δ = softplus(w·x + b):
close to a scale where softplus is exponential, and a damage that saturates, as in issue 22), and gate
scales the z rows of ``in_proj`` (SiLU(scale·z), not scale·SiLU(z)). ``residual`` cannot be written into
the weights (the block output is the residual stream itself): ``plant`` installs the steering hooks for it,
which live as long as the model object and are not saved. The tokenizer is saved beside the weights.

Mamba-2 mixers (``_damp_mamba2``): mixer_out = ``out_proj`` rows and delta = the per-head ``dt_bias``, as
above; gate = the z rows of ``in_proj`` (SiLU(scale·z)); B or C = their channels of the depthwise conv's
weight and bias (SiLU(scale·conv), not a pure scale); ssm_out = ``out_proj`` columns, which scale the gated
RMSNorm's output channels, not y before the norm where steering's ssm_out acts (so ``plant``, which the
survey uses, plants a Mamba-2 ssm_out through the steering hooks instead: a scale of y). A hybrid's Mamba
mixers are damped as the pure model of their family (Bamba, Granite 4.0-H, Zamba2, Nemotron-H and Falcon-H1 as
Mamba-2, Jamba as Mamba-1, except that its B and C, which pass RMS norms with weights after ``x_proj``,
are damped in those weights: a pure scale again). Falcon-H1's µP multipliers sit outside the damped
weights, so a plant there is the same weight change, not the same activation scale.

    ssmsteer study damp --model ref-mamba1 --layer 2 --site B --channels 4 --scale 0.1 --seed 2 \\
        --out planted.model
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

PLANT_SITES = ("mixer_out", "ssm_out", "gate", "delta", "B", "C")  # damped in the weights
HOOK_PLANT_SITES = ("residual",)  # damped by the steering hooks: every site, with PLANT_SITES (and ssm_out
# of Mamba-2 mixers in ``plant``: see there)
PLANTED_CHANNELS = 8  # the first planted protocol's plant: 8 mixer_out channels x0.2, seed 0
PLANTED_SCALE = 0.2


def random_channels(width: int, count: int, seed: int) -> list[int]:
    """``count`` of ``width`` channels drawn with ``random.Random(seed)``, sorted: every plant and every
    random control is drawn so."""
    return sorted(random.Random(seed).sample(range(width), count))


def control_channels(width: int, count: int, avoid: list[int] | None = None) -> tuple[list[int], int]:
    """A random control (channels, seed): the draw of seed 0, or of the first seed after it whose draw is
    not ``avoid`` (the planted channels, when the control sits at the plant's layer and site), so that the
    control is never the plant."""
    if count == width and avoid == list(range(width)):
        raise ValueError(f"all {width} channels are planted: no random control can differ from the plant")
    seed = 0
    while (channels := random_channels(width, count, seed)) == avoid:
        seed += 1
    return channels, seed


def damp_weights(model, layer: int, site: str, count: int, scale: float, seed: int) -> list[int]:
    """Damp ``count`` random channels (``seed``) of ``layer``'s ``site`` by ``scale``, in the weights, in
    place (Mamba-1 and Mamba-2 mixers, a hybrid's by decoder index). Returns the channels, sorted."""
    import torch

    from lm_eval_ssmsteer.mamba.arch import MAMBA2, describe_model

    if site not in PLANT_SITES:
        raise ValueError(f"site {site!r} cannot be damped in the weights; allowed: {', '.join(PLANT_SITES)}")
    arch = describe_model(model)
    mixer = _mamba_mixer(model, layer)
    channels = random_channels(arch.site_width(site), count, seed)
    with torch.no_grad():
        if arch.family == MAMBA2:
            _damp_mamba2(mixer, site, channels, scale)
            return channels
        if site == "delta":  # Δ at zero input times scale: b' = softplus⁻¹(scale · softplus(b))
            _damp_softplus_bias(mixer.dt_proj.bias, channels, scale)
            return channels
        if site == "mixer_out":
            weight, first_row = mixer.out_proj.weight, 0
        elif site == "ssm_out":
            weight, first_row = mixer.out_proj.weight.T, 0
        elif site == "gate":  # in_proj writes [x; z]: z's rows come after d_inner x rows
            weight, first_row = mixer.in_proj.weight, mixer.intermediate_size
        elif hasattr(mixer, "dt_layernorm"):  # Jamba: B and C pass RMS norms with weights after x_proj
            if weightless_bc_norms(mixer):
                raise ValueError(
                    f"site {site!r} of a FalconMamba mixer cannot be damped in the weights: its B and C pass "
                    "weightless RMS norms after x_proj (the dummy weight is read on the kernel path only); "
                    "plant() damps them through the steering hooks"
                )
            weight, first_row = (mixer.b_layernorm if site == "B" else mixer.c_layernorm).weight, 0
        else:  # x_proj's rows: Δ's rank, then B's state channels, then C's
            weight = mixer.x_proj.weight
            first_row = mixer.time_step_rank + (mixer.ssm_state_size if site == "C" else 0)
        weight[[first_row + c for c in channels]] *= scale
    return channels


def weightless_bc_norms(mixer) -> bool:
    """FalconMamba: B and C are RMS-normalised without a weight after x_proj, so no weight scales them
    (its norms hold a dummy weight buffer that only the kernel path reads; Jamba's are real weights)."""
    import torch

    norm = getattr(mixer, "b_layernorm", None)
    return norm is not None and not isinstance(norm.weight, torch.nn.Parameter)


def _mamba_mixer(model, layer: int):
    """The Mamba mixer of decoder layer ``layer``; a clear error for a layer that holds none."""
    from lm_eval_ssmsteer.mamba.arch import mamba_mixers

    mixers = mamba_mixers(model)
    if layer not in mixers:
        raise ValueError(f"layer {layer} holds no Mamba mixer; allowed: {', '.join(map(str, mixers))}")
    return mixers[layer]


def _damp_softplus_bias(bias, channels: list[int], scale: float) -> None:
    """softplus(b) of ``channels`` times ``scale``: b' = softplus⁻¹(scale · softplus(b))."""
    import torch
    import torch.nn.functional as F

    target = scale * F.softplus(bias[channels].float())
    bias[channels] = (target + torch.log(-torch.expm1(-target))).to(bias.dtype)


def _damp_mamba2(mixer, site: str, channels: list[int], scale: float) -> None:
    """``damp_weights`` on a Mamba-2 mixer: ``in_proj`` writes [z; x, B, C; dt], the conv reads [x, B, C]."""
    d_inner, states = mixer.intermediate_size, mixer.n_groups * mixer.ssm_state_size
    if site == "delta":  # per head: Δ = softplus(dt + dt_bias)
        _damp_softplus_bias(mixer.dt_bias, channels, scale)
        return
    if site == "mixer_out":
        mixer.out_proj.weight[channels] *= scale
    elif site == "ssm_out":  # the gated norm's output channels
        mixer.out_proj.weight[:, channels] *= scale
    elif site == "gate":  # z: in_proj's first d_inner rows (the layout mamba/mixer_math.py splits)
        mixer.in_proj.weight[channels] *= scale
    else:  # B or C: their conv channels, weight and bias, so the conv's output is scaled before SiLU
        first = d_inner + (states if site == "C" else 0)
        rows = [first + c for c in channels]
        mixer.conv1d.weight[rows] *= scale
        if mixer.conv1d.bias is not None:
            mixer.conv1d.bias[rows] *= scale


def plant(model, layer: int, site: str, count: int, scale: float, seed: int) -> list[int]:
    """``damp_weights`` for the weight sites; ``residual`` (the block output, which no weight writes) and the
    ``ssm_out`` of a Mamba-2 mixer (pure or in a hybrid) are planted through the steering hooks themselves,
    kept as long as ``model``: the plant is then exactly steering's intervention at ``scale`` (also B and C
    of FalconMamba, which no weight scales: ``weightless_bc_norms``). For Mamba-2's
    ssm_out that is y before the gated norm: no weight scales y there (``damp_weights`` scales the norm's
    output channels, which the RMS norm has already mixed), and a plant no spec can undo measures the plant,
    not the finder. Returns the channels, sorted."""
    import torch

    from lm_eval_ssmsteer.mamba.arch import MAMBA2, describe_model
    from lm_eval_ssmsteer.steering.apply import install_factors

    arch = describe_model(model)
    mixer = _mamba_mixer(model, layer)  # a plant sits at a Mamba layer, as a spec's layer does
    by_hooks = (
        site in HOOK_PLANT_SITES
        or (site == "ssm_out" and arch.family == MAMBA2)
        or (site in ("B", "C") and weightless_bc_norms(mixer))
    )
    if not by_hooks:
        return damp_weights(model, layer, site, count, scale, seed)
    width = arch.site_width(site)
    channels = random_channels(width, count, seed)
    factor = torch.ones(width, device=next(model.parameters()).device)
    factor[channels] = scale
    install_factors(model, {(layer, site): factor})
    return channels


def save_damped(
    pretrained: str,
    layer: int,
    folder: Path,
    seed: int = 0,
    site: str = "mixer_out",
    count: int = PLANTED_CHANNELS,
    scale: float = PLANTED_SCALE,
) -> tuple[str, list[int]]:
    """``pretrained`` saved in ``folder`` with ``damp_weights`` applied; returns the folder and the damped
    channels."""
    from lm_eval_ssmsteer.loading import load_model

    model, tokenizer = load_model(pretrained)
    channels = damp_weights(model, layer, site, count, scale, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), channels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="shipped model name, HF id or local folder")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--site", default="mixer_out", choices=PLANT_SITES)
    parser.add_argument("--channels", type=int, default=PLANTED_CHANNELS, help="how many channels to damp")
    parser.add_argument("--scale", type=float, default=PLANTED_SCALE, help="the damping factor")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice of channels")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created)")


def run(args: argparse.Namespace) -> int:
    folder, channels = save_damped(
        args.model, args.layer, args.out, args.seed, args.site, args.channels, args.scale
    )
    print(f"{folder}: layer {args.layer} {args.site} channels {channels} x{args.scale:g}")
    return 0
