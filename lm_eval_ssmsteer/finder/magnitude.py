"""Per-channel magnitude of what steering multiplies, at every (layer, site), from one forward pass per batch.

A damped channel is one whose activation is small against the other channels of its site. The first-order
score cannot see a damage that saturates (issue 22), but its size can: ``channel_rms`` records, through the
steering hooks themselves, the root mean square of each channel of the very tensor a steering factor
multiplies (Δ after its softplus, B, C, the gated output, the mixer or block output), and
``low_outliers`` says which channels of a pair sit far below the pair's typical channel, on a log scale
with a robust spread (median and median absolute deviation).

How it reads the tensors without knowing transformers' internals: each pair gets a factor of ones that
is a ``_Observer`` tensor. The steering hooks multiply the site's tensor by it (``steering.apply``), and
the observer records the square of the other operand of that product, summed down to the factor's own
shape, so the layout of every site (channels last, channels first, per group or per head) is the hooks'
business, not this module's. The factor requires grad, so the Δ hook takes its differentiable path, which
multiplies Δ itself (after the softplus) by the factor. Every position of a batch counts, the padding
after short documents included.

On Mamba-1 the ``ssm_out`` / ``gate`` product y·SiLU(z) feeds ``out_proj`` directly, so a channel's size
there is its RMS times the norm of its ``out_proj`` column (``channel_size``): a channel the next map
reads weakly is as small as one that arrives weak.

On Mamba-2 steering's ``ssm_out`` and ``gate`` multiply y where it enters the gated RMSNorm, so the
observer reads y for both, and a damped z leaves y as it is. ``channel_rms(..., gated=LAYERS)`` reads those
layers' ``gate`` pairs as the product y·SiLU(z) the norm normalises instead (the operands as the norm's
pre-hook gets them, ``mamba.compat.gated_norm_operands``), which a damped z lowers. ``balanced_size`` then
sets each channel against the line fitted of its log size on the log norm of what reads it
(``reading_norms``: the ``out_proj`` column times the gated norm's weight): on ref-mamba2 y and that norm go
together (correlation 0.84 at layer 0), and a channel that arrives weak where it is read strongly lies below
the line, where a naturally quiet channel does not (``find --balance``; scripts/site_balance.py prints the
fits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lm_eval_ssmsteer.steering import steer_factors

Pair = tuple[int, str]
GATED_SITES = ("ssm_out", "gate")  # the sites that multiply the gated output (twins in steering)
_MULS = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}
OUTLIER_Z = 3.0  # a channel is a low outlier when its log RMS lies this many robust spreads below the median
MAD_TO_SD = 1.4826  # the median absolute deviation of a normal sample, times this, estimates its sd
LINE_SPREADS = 3.0  # robust_line refits on the points within this many robust spreads of its line
LINE_REFITS = 5


class _Sums:
    """Running sum of squares and element count per pair."""

    def __init__(self) -> None:
        self.squares: dict[Pair, torch.Tensor] = {}
        self.count: dict[Pair, int] = {}

    def add(self, pair: Pair, value: torch.Tensor, factor_shape: torch.Size) -> None:
        squares = value.detach().float().square().sum_to_size(factor_shape).flatten()  # on its device
        n = value.numel() // max(1, squares.numel())
        self.squares[pair] = self.squares.get(pair, 0) + squares
        self.count[pair] = self.count.get(pair, 0) + n


class _Observer(torch.Tensor):
    """A factor (all ones) that records the tensor it multiplies; whatever is derived from it (a view, a
    layout change) stays an observer of the same pair."""

    pairs: tuple[Pair, ...]  # more than one where the hooks multiply two sites' factors (Mamba-1's
    sums: _Sums  # ssm_out and gate scale the same product)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        observers = [a for a in args if isinstance(a, _Observer)]
        with torch._C.DisableTorchFunctionSubclass():
            if func in _MULS and len(args) == 2 and len(observers) == 1:
                other = args[1] if args[0] is observers[0] else args[0]
                if isinstance(other, torch.Tensor) and other.is_floating_point():
                    for pair in observers[0].pairs:
                        observers[0].sums.add(pair, other, observers[0].shape)
                    return func(*args, **kwargs)  # a plain tensor: the site's tensor times one
            result = func(*args, **kwargs)
        if not observers or not isinstance(result, torch.Tensor) or isinstance(result, _Observer):
            return result
        pairs = tuple(dict.fromkeys(p for o in observers for p in o.pairs))
        return _observe(result, pairs, observers[0].sums)


def _observe(t: torch.Tensor, pairs: tuple[Pair, ...], sums: _Sums) -> _Observer:
    out = t.as_subclass(_Observer)
    out.pairs, out.sums = pairs, sums
    return out


def channel_rms(
    model,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    pairs: list[Pair],
    width: Callable[[str], int],
    advance: Callable[[], object] = lambda: None,
    gated: tuple[int, ...] = (),
) -> dict[Pair, torch.Tensor]:
    """Root mean square of each channel of every pair over the batches (fp32, on the CPU), read where
    steering multiplies; ``width(site)`` gives a site's channel count; ``advance`` after each batch.
    ``gated``: Mamba-2 layers whose ``gate`` pair is read as y·SiLU(z), the product their gated norm
    normalises (after any steering of y), instead of y (its ``ssm_out`` pair stays y)."""
    from lm_eval_ssmsteer.mamba.arch import mamba_mixers
    from lm_eval_ssmsteer.mamba.compat import gated_norm_operands

    device = next(model.parameters()).device
    sums = _Sums()
    factors = {
        p: _observe(torch.ones(width(p[1]), device=device).requires_grad_(True), (p,), sums) for p in pairs
    }
    products = _Sums()
    read = {layer: [p for p in pairs if p == (layer, "gate")] for layer in gated}

    def reader(layer: int):
        def hook(module, args, kwargs):
            y, z = gated_norm_operands(args, kwargs)
            product = y.float() if z is None else y.float() * torch.nn.functional.silu(z.float())
            for pair in read[layer]:
                products.add(pair, product, torch.Size([product.shape[-1]]))

        return hook

    with torch.no_grad(), steer_factors(model, factors):
        mixers = mamba_mixers(model) if gated else {}
        # registered after the steering hooks (a plant's, the observers'), so they read the steered y
        handles = [
            mixers[layer].norm.register_forward_pre_hook(reader(layer), with_kwargs=True)
            for layer in gated
            if read[layer]
        ]
        try:
            for ids, _ in batches:
                model(ids, use_cache=False, logits_to_keep=1)
                advance()
        finally:
            for handle in handles:
                handle.remove()
    sums.squares.update(products.squares)
    sums.count.update(products.count)
    missing = [p for p in pairs if p not in sums.squares]
    if missing:
        raise RuntimeError(f"no activation reached the steering hooks of {missing}")
    return {p: (sums.squares[p] / sums.count[p]).sqrt().cpu() for p in pairs}  # one copy a pair, at the end


def channel_size(model, rms: dict[Pair, torch.Tensor]) -> dict[Pair, torch.Tensor]:
    """``rms`` with the Mamba-1 ``ssm_out`` and ``gate`` channels weighted by their ``out_proj`` column norm
    (what each contributes to the mixer output); every other pair as it is."""
    from lm_eval_ssmsteer.mamba.arch import MAMBA1, describe_model

    if describe_model(model).family != MAMBA1:
        return dict(rms)
    columns = reading_norms(model, sorted({layer for layer, site in rms if site in GATED_SITES}))
    return {
        (layer, site): value * columns[layer].float() if site in GATED_SITES else value
        for (layer, site), value in rms.items()
    }


def reading_norms(model, layers: list[int]) -> dict[int, torch.Tensor]:
    """Per Mamba layer, the norm of what reads each channel of its gated output (fp64, on the CPU): the
    ``out_proj`` column, times (Mamba-2) the absolute weight of the gated norm before it."""
    from lm_eval_ssmsteer.mamba.arch import MAMBA1, describe_model, mamba_mixers

    mixers = mamba_mixers(model)
    mamba1 = describe_model(model).family == MAMBA1
    out = {}
    for layer in layers:
        column = mixers[layer].out_proj.weight.detach().double().norm(dim=0).cpu()
        if not mamba1:
            column = column * mixers[layer].norm.weight.detach().double().abs().cpu()
        out[layer] = column
    return out


def robust_line(x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor, float]:
    """y on x by least squares, refitted LINE_REFITS times on the points within LINE_SPREADS robust spreads
    of the line: the slope, every point's residual (centred on their median) and their robust spread
    (MAD_TO_SD times the median absolute residual)."""
    x, y = x.double(), y.double()
    keep = torch.ones_like(x, dtype=torch.bool)
    slope = 0.0
    residual = y - y.median()
    spread = 0.0
    for _ in range(LINE_REFITS):
        if int(keep.sum()) < 2:
            break
        design = torch.stack([x[keep], torch.ones_like(x[keep])], dim=1)
        slope, icept = torch.linalg.lstsq(design, y[keep][:, None]).solution[:, 0].tolist()
        residual = y - (slope * x + icept)
        residual = residual - residual.median()
        spread = float(residual.abs().median()) * MAD_TO_SD
        keep = residual.abs() < LINE_SPREADS * spread
    return slope, residual, spread


def balanced_size(size: torch.Tensor, reading: torch.Tensor) -> torch.Tensor:
    """Each channel's size against what reads it: exp of its residual from the line fitted of log size on
    log reading norm (``robust_line``), so the channel on the line is 1 and a channel that arrives weak
    where it is read strongly is small; fp32, as the sizes are."""
    _, residual, _ = robust_line(reading.double().clamp(min=1e-30).log(), log_size(size))
    return residual.exp().float()


@dataclass(frozen=True)
class Outliers:
    """The channels of one pair whose RMS lies far below its median channel, lowest first."""

    channels: list[int]  # low outliers, most extreme first
    z: list[float]  # their robust z-scores of log RMS (negative)
    order: list[int]  # every channel of the pair, lowest robust z first
    restore: float  # the scale that brings the outliers, by geometric mean, to the median channel

    @property
    def score(self) -> float:
        """How far the most extreme channel lies below the rest (0 when none is an outlier)."""
        return -self.z[0] if self.z else 0.0


def log_size(rms: torch.Tensor) -> torch.Tensor:
    """Each channel's log size (fp64; a silent channel as 1e-30), the scale the outlier statistics read."""
    return rms.double().clamp(min=1e-30).log()


def restoring_scale(log_rms: torch.Tensor, channels: list[int]) -> float:
    """The scale that brings ``channels``, by geometric mean, to the pair's median channel (1.0 for none)."""
    return float((log_rms.median() - log_rms[channels].mean()).exp()) if channels else 1.0


def low_outliers(rms: torch.Tensor, threshold: float = OUTLIER_Z) -> Outliers:
    """Robust z-scores of log RMS against the pair's median and median absolute deviation; channels below
    -``threshold``. A site of identical channels (spread 0) has no outliers."""
    log_rms = log_size(rms)
    median = log_rms.median()
    spread = float((log_rms - median).abs().median()) * MAD_TO_SD
    if spread <= 0.0:
        return Outliers([], [], list(range(rms.numel())), 1.0)
    z = (log_rms - median) / spread
    order = z.argsort().tolist()
    low = [c for c in order if z[c] < -threshold]
    restore = restoring_scale(log_rms, low)
    return Outliers(low, [float(z[c]) for c in low], order, restore)
