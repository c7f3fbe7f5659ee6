"""Mamba Knockout (arXiv 2505.24244): block the flow from source tokens to target tokens in a window of
layers, in all features or split by decay (see FEATURES), and measure the prediction.

In each mixer of the window, target positions t read a scan whose state skipped the source inputs
(still decaying over them); every other position is untouched. Because the state is linear in its
inputs, that knocked-out readout is exactly the hidden attention with the entries α[t, s] removed:

    y_t ← y_t − Σ_{s ∈ sources, s ≤ t} knocked ⊙ α_{t,s} ⊙ v_s          (t ∈ targets)

which for Mamba-2 is the SSD matrix M[t, s] = (C_t·B_s)·exp(A_h Σ_{k=s+1..t} Δ_k)·Δ_s masked per head.
Not knocked out (as in the paper): the causal conv (a source leaks into the next K−1 positions'
v), the D skip, and the gate. The knocked y then goes through the same readout (gate, Mamba-2 norm,
out_proj) as the unintervened mixer.

In a hybrid the window is a range of decoder layers, and both kinds of token-to-token edge in it are
blocked: the Mamba layers' as above, and the attention layers' by masking the attention weights from the
source to the target positions (attention knockout, Geva et al. 2023, the Mamba Knockout paper's
transformer baseline): the attention mask gets −∞ (the dtype's minimum) at (target, source) before the
softmax. So information flow can be traced through a whole hybrid; with a one-tap conv, blocking every
edge from the sources in every layer gives the targets exactly what the model computes without the
sources (tests/test_hybrid_interpret.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lm_eval_ssmsteer.interpret.attention import DEFAULT_MEMORY_BYTES, channel_attention_rows, row_chunks
from lm_eval_ssmsteer.interpret.capture import check_layers, check_positions
from lm_eval_ssmsteer.mamba.arch import MAMBA1, attention_modules, mamba_mixers
from lm_eval_ssmsteer.mamba.compat import forward_cache
from lm_eval_ssmsteer.mamba.mixer_math import MixerInternals, mixer_internals, readout

# Which features (channels for Mamba-1, heads for Mamba-2) have their flow knocked out. "The fast third":
# the third with the fastest decay (see decay_third). The authors' code (model_interface.py
# _get_feature_mask) builds a mask of the features that KEEP their flow, so their FAST_DECAY / SLOW_DECAY
# curves are keep_fast / keep_slow here.
FEATURES = {
    "all": "every channel/head is knocked out",
    "knock_fast": "the fastest-decaying third of the channels/heads is knocked out; the rest keep their flow",
    "knock_slow": "the slowest-decaying third of the channels/heads is knocked out; the rest keep their flow",
    "keep_fast": "the fastest-decaying third of the channels/heads keeps its flow; the other two thirds are "
    "knocked out (the paper's FAST_DECAY)",
    "keep_slow": "the slowest-decaying third of the channels/heads keeps its flow; the other two thirds are "
    "knocked out (the paper's SLOW_DECAY)",
}


def check_features(name: str) -> str:
    """``name`` if it is one of FEATURES; the pre-rename "fast"/"slow" are refused with both meanings."""
    if name in ("fast", "slow"):
        raise ValueError(
            f"features {name!r} is ambiguous: use knock_{name} (the {name}est-decaying third is knocked "
            f"out, the rest keep their flow; the old {name!r}) or keep_{name} (that third keeps its flow, "
            f"the other two thirds are knocked out; the paper's {name.upper()}_DECAY)"
        )
    if name not in FEATURES:
        raise ValueError(f"features {name!r} is not one of {', '.join(FEATURES)}")
    return name


@dataclass(frozen=True)
class KnockoutSpec:
    """Which flow to block: from token positions ``sources`` to ``targets`` (negative = from the end) in
    mixers ``layers``, through ``features`` (a key of FEATURES)."""

    layers: tuple[int, ...]
    sources: tuple[int, ...]
    targets: tuple[int, ...]
    features: str = "all"

    def __post_init__(self) -> None:
        check_features(self.features)
        if not self.layers:
            raise ValueError("the knockout window is empty: give at least one layer")
        if not self.targets:
            raise ValueError("no target positions given: give at least one token index")

    def to_dict(self) -> dict:
        return asdict(self)


def decay_score(internals: MixerInternals) -> torch.Tensor:
    """How slowly each feature forgets: Σ_n exp(A[e, n]) per channel (Mamba-1), exp(A_h) per head
    (Mamba-2); A = −exp(A_log), so exp(A) = exp(−exp(A_log)). Larger = slower decay."""
    if internals.kind == MAMBA1:
        return torch.exp(internals.A).sum(-1)  # (d,)
    return torch.exp(internals.A)  # (H,)


def decay_third(score: torch.Tensor, speed: str) -> torch.Tensor:
    """Indices of the ``speed`` ("fast"/"slow") third of the features by decay score (at least one; ties
    in index order). The authors rank the same way and size the third n // 3 (no minimum)."""
    order = torch.argsort(score, descending=speed == "slow", stable=True)
    return order[: max(1, score.numel() // 3)]


def knocked_channels(internals: MixerInternals, features: str) -> torch.Tensor:
    """Bool (d,): the channels whose flow is knocked out under ``features`` (see FEATURES); for Mamba-2
    each head's mask is repeated over its channels."""
    score = decay_score(internals)
    knocked = torch.ones_like(score, dtype=torch.bool)
    if features != "all":
        action, speed = check_features(features).split("_")
        named = torch.zeros_like(knocked)
        named[decay_third(score, speed)] = True
        knocked = named if action == "knock" else ~named
    return knocked if internals.kind == MAMBA1 else knocked.repeat_interleave(internals.head_dim)


def _runs(positions: Sequence[int], max_rows: int) -> Iterator[range]:
    """Sorted positions grouped into contiguous ranges of at most max_rows."""
    start = prev = None
    for pos in positions:
        if start is not None and pos == prev + 1 and pos - start < max_rows:
            prev = pos
            continue
        if start is not None:
            yield range(start, prev + 1)
        start = prev = pos
    if start is not None:
        yield range(start, prev + 1)


def knocked_scan(
    internals: MixerInternals,
    sources: Sequence[int],
    targets: Sequence[int],
    features: str = "all",
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> torch.Tensor:
    """The scan output y (b, l, d) with the flow sources -> targets removed (same positions for every
    sequence of the batch; non-negative sorted indices, see check_positions)."""
    y = internals.y.clone()
    if not sources:
        return y
    length, d = internals.length, internals.v.shape[-1]
    knocked = knocked_channels(internals, features).to(y.dtype)  # (d,)
    source_mask = torch.zeros(length, dtype=y.dtype, device=y.device)
    source_mask[list(sources)] = 1.0
    rows_per_chunk = len(next(row_chunks(length, length * d * 4 * 4, memory_bytes)))
    for b in range(y.shape[0]):
        one = internals.select(b)
        for rows in _runs(targets, rows_per_chunk):
            alpha = channel_attention_rows(one, rows)  # (r, m_end, d)
            blocked = alpha * source_mask[None, : rows.stop, None] * knocked  # the removed entries
            y[b, rows.start : rows.stop] -= torch.einsum("imd,md->id", blocked, one.v[0, : rows.stop])
    return y


def _knockout_hook(spec: KnockoutSpec, memory_bytes: int):
    def hook(mixer: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        hidden = args[0] if args else kwargs["hidden_states"]
        if forward_cache(kwargs) is not None and hidden.shape[1] == 1:
            raise RuntimeError(
                "knockout recomputes whole sequences; it cannot run on a one-token decoding step with "
                "a cache: call the model on the full input with use_cache=False"
            )
        length = hidden.shape[1]
        sources = check_positions(spec.sources, length, "source")
        targets = check_positions(spec.targets, length, "target")
        internals = mixer_internals(mixer, hidden, kwargs.get("attention_mask"))
        y = knocked_scan(internals, sources, targets, spec.features, memory_bytes)
        _, knocked_output, _ = readout(internals, y)
        output = output.clone()
        output[:, list(targets)] = knocked_output[:, list(targets)].to(output.dtype)
        return output

    return hook


def blocked_attention_mask(
    mask: torch.Tensor | None, sources: Sequence[int], targets: Sequence[int], length: int, dtype: torch.dtype
) -> torch.Tensor:
    """An additive attention mask (…, length, length) that is ``mask`` (None: causal; bool: True = attend)
    with the entries (target, source) set to the dtype's minimum."""
    low = torch.finfo(dtype).min
    device = mask.device if mask is not None else None
    if mask is None:
        future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
        mask = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(future, low)[None, None]
    elif mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, low)
    blocked = torch.zeros(length, length, dtype=torch.bool, device=mask.device)
    blocked[torch.tensor(targets)[:, None], torch.tensor(sources)[None, :]] = True
    return mask.to(dtype).masked_fill(blocked, low)


def _attention_knockout_hook(spec: KnockoutSpec, active: list[bool]):
    def hook(module: nn.Module, args: tuple, kwargs: dict):
        if not active[0]:  # a shared attention module (Zamba2) also runs in layers outside the window
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        length = hidden.shape[1]
        if forward_cache(kwargs) is not None and length == 1:
            raise RuntimeError(
                "knockout recomputes whole sequences; it cannot run on a one-token decoding step with "
                "a cache: call the model on the full input with use_cache=False"
            )
        sources = check_positions(spec.sources, length, "source")
        targets = check_positions(spec.targets, length, "target")
        for t in targets:
            if all(s in sources for s in range(t + 1)):
                raise ValueError(
                    f"target {t} would attend to no position: every position up to it is a source; keep "
                    "a target out of the sources"
                )
        mask = blocked_attention_mask(kwargs.get("attention_mask"), sources, targets, length, hidden.dtype)
        return args, {**kwargs, "attention_mask": mask}

    return hook


def _while_running(layer: nn.Module, active: list[bool]) -> list:
    """Hooks that keep active[0] True exactly while ``layer`` runs."""

    def start(module, args):
        active[0] = True

    def stop(module, args, output):
        active[0] = False

    return [layer.register_forward_pre_hook(start), layer.register_forward_hook(stop, always_call=True)]


@contextmanager
def knockout(
    model: nn.Module, spec: KnockoutSpec, memory_bytes: int = DEFAULT_MEMORY_BYTES
) -> Iterator[None]:
    """Within the block, every forward pass of ``model`` has the flow of ``spec`` knocked out: in the
    Mamba mixers of the window's layers and, in a hybrid, in their attention modules."""
    blocks, mixers = model.base_model.layers, mamba_mixers(model)
    layers = check_layers(spec.layers, len(blocks))
    handles = []
    try:
        for i in layers:
            if i in mixers:
                hook = _knockout_hook(spec, memory_bytes)
                handles.append(mixers[i].register_forward_hook(hook, with_kwargs=True))
            attention = attention_modules(blocks[i])
            if attention:
                active = [False]
                handles.extend(_while_running(blocks[i], active))
                for module in attention:
                    hook = _attention_knockout_hook(spec, active)
                    handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class KnockoutEffect:
    """Next-token prediction at ``position`` for ``target_token``, without and with the knockout."""

    target_token: int
    position: int
    prob_base: float
    prob_knocked: float
    relative_change_pct: float  # 100 · (prob_knocked − prob_base) / prob_base
    argmax_hit_base: bool
    argmax_hit_knocked: bool

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def next_token_probs(model: nn.Module, input_ids: torch.Tensor, position: int) -> torch.Tensor:
    """Softmax over the vocabulary (fp32) of the prediction made at ``position`` of input_ids (1, l)."""
    logits = model(input_ids=input_ids, use_cache=False).logits[0, position]
    return torch.softmax(logits.float(), dim=-1)


def knockout_effect(
    model: nn.Module,
    input_ids: torch.Tensor,
    spec: KnockoutSpec,
    target_token: int | None = None,
    position: int = -1,
    base_probs: torch.Tensor | None = None,
) -> KnockoutEffect:
    """Probability of target_token (default: the unintervened argmax) predicted at ``position``, with and
    without the knockout. Pass base_probs (from next_token_probs) to reuse the unintervened run."""
    length = input_ids.shape[1]
    (position,) = check_positions([position], length, "prediction")
    check_positions(spec.sources, length, "source")
    check_positions(spec.targets, length, "target")
    if base_probs is None:
        base_probs = next_token_probs(model, input_ids, position)
    vocab = base_probs.shape[0]
    if target_token is None:
        target_token = int(base_probs.argmax())
    elif not 0 <= target_token < vocab:
        raise ValueError(f"target token id {target_token} is out of range: the vocabulary has {vocab} ids")
    with knockout(model, spec):
        knocked_probs = next_token_probs(model, input_ids, position)
    base, knocked = float(base_probs[target_token]), float(knocked_probs[target_token])
    return KnockoutEffect(
        target_token=target_token,
        position=position,
        prob_base=base,
        prob_knocked=knocked,
        relative_change_pct=100.0 * (knocked - base) / base if base > 0 else 0.0,
        argmax_hit_base=int(base_probs.argmax()) == target_token,
        argmax_hit_knocked=int(knocked_probs.argmax()) == target_token,
    )
