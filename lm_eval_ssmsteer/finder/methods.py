"""The finder's scoring methods: each ranks the channels of (layer, site) pairs as steering candidates.

- ``variance``: per-channel variance, across documents, of the token-averaged activation (the paper's
  ranking); only at sites a module hook can read (mixer_out, residual).
- ``attribution``: g = dL/ds at s = 1 for a per-channel scale s at every (layer, site), from one forward
  and backward pass per batch, with one scale per document so that the spread F of the per-document
  gradients comes for free. To first order, scaling channel c by s changes the loss by (s - 1)·g_c;
  channels rank by -g / sqrt(F) (to amplify) or g / sqrt(F) (to damp), which is dimensionless and does
  not shrink with the channel's size (see ``Attribution``). A pair's score is the mean of its best
  SITE_TOP channel values, standardized against the same statistic under random sign flips of the
  per-document gradients (``rank_attribution``): the raw top-k mean grows with a site's width even when
  nothing is there, the standardized one does not, so sites of different widths compare.
- ``causal``: attribution, then the best-scored pairs screened by real interventions on the calibration
  data (search.py), and the top channels of the winner re-ranked by one intervention each (amplify by
  VERIFY_AMPLIFY, ablate to 0).
- ``probe``: attribution only orders channels; every distinct pair is probed by real interventions at a
  large scale (its top channels x PROBE_SCALE, where a damage that saturates shows although the gradient
  at scale 1 is flat), and the best few pairs get a short coordinate search: the gradient taken AT the
  probed point (``gradient_at``) says which channels of the set want to go back to 1 and which outside
  want to join it; a move is kept only if a real evaluation confirms it (search.py).
- ``outlier``: ``causal``'s screen (amplify rows at x3 and x8), plus the pairs whose single steepest channel
  gradient is most negative (the consistency score dilutes one channel that matters among many), plus
  the pairs whose smallest channels lie furthest below the rest of their site (``finder.magnitude``: a
  damped channel is small although the loss is flat in its scale), each screened with those channels
  amplified (search.py).
- ``dt-bias``: the paper's weight-only layer heuristic (coefficient of variation of the Δ bias), then
  channels of that layer's mixer_out by variance.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lm_eval_ssmsteer.mamba.arch import ArchInfo, block_hidden, describe_model, mamba_mixers
from lm_eval_ssmsteer.mamba.compat import scan_functions
from lm_eval_ssmsteer.mamba.patch import swap_during_calls
from lm_eval_ssmsteer.mamba.sites import OUTPUT_SITES, SCAN_INPUT_REACHES, site_row
from lm_eval_ssmsteer.spec import SteeringSpec
from lm_eval_ssmsteer.steering import steer, steer_factors

METHODS = ("outlier", "causal", "probe", "attribution", "variance", "dt-bias")
DEFAULT_METHOD = "outlier"  # since 2026-12-04 (issue 22: docs/finder.md, "Method outlier"); causal before
# method outlier: how the channels of a pair chosen for its steepest channel are ordered (find)
STEEP_ORDERS = ("gradient", "size", "ratio")
# how the validation documents choose among the validated pairs (``find``'s ``validate_choice``): "gain",
# the one that lowers their loss most; "paired", that one only when, document by document, it lowers their
# loss more than the calibration's choice does (else the calibration's choice stays)
VALIDATE_CHOICES = ("gain", "paired")
SITE_TOP = 8  # a pair's statistic is the mean of its best 8 channels' values (a sum would favour wide sites)
NULL_DRAWS = 256  # random sign flips of the per-document gradients behind a pair's standardized score
NULL_SEED = 0
VERIFY_AMPLIFY = 3.0

Pair = tuple[int, str]
Batches = list[tuple[torch.Tensor, torch.Tensor]]
Advance = Callable[[], object]  # called once per item done (a batch, a channel), for a progress bar


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class LossAccuracy:
    loss: float  # mean answer-token cross-entropy
    accuracy: float  # share of documents whose whole answer is the greedy (teacher-forced) choice


@dataclass
class Ranking:
    """Channels of one pair in order of promise, per direction, with the pair's overall score."""

    amplify: list[int]
    damp: list[int]
    score: float
    benefit: dict[str, list[float]] | None = None  # per-channel expected loss decrease, by direction
    direction: str | None = None  # the direction with the better score, where the method tells them apart
    helpful: dict[str, int] | None = None  # verified channels that lowered the loss alone, by direction


class _Captured(Exception):
    pass


def _through_blocks(model, hidden: torch.Tensor, first: int, end: int) -> torch.Tensor:
    """``hidden``, the input of block ``first``, run through blocks first..end-1 of a pure Mamba-family
    model as its own forward runs them (no cache, no mask): the input of block ``end``."""
    for block in model.base_model.layers[first:end]:
        hidden = block(hidden)
    return hidden


class LayerInputs:
    """The input of one block for every batch, computed once. A steered evaluation at that layer or
    later leaves the layers before it unchanged, so it runs only from there (``evaluate(..., start=)``).
    ``below``: the cached input of an earlier layer of the same batches, run from there through the blocks
    between, as the evaluations from a cached input run them (``_logits``), instead of from the tokens."""

    def __init__(self, model, batches: Batches, layer: int, below: LayerInputs | None = None):
        self.layer = layer
        self.hidden: list[torch.Tensor] = []
        # (batch, call) -> what the layer's scan function returned unsteered, recorded by `_scan_replay`
        self.scans: dict[tuple[int, int], Any] = {}
        if below is not None:
            if not below.layer < layer:
                raise ValueError(f"below: the input of layer {below.layer}; allowed: a layer before {layer}")
            with torch.no_grad():
                self.hidden = [_through_blocks(model, hidden, below.layer, layer) for hidden in below.hidden]
            return

        def capture(module, args, kwargs):
            self.hidden.append(args[0] if args else kwargs["hidden_states"])
            raise _Captured

        handle = model.base_model.layers[layer].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with torch.no_grad():
                for ids, _ in batches:
                    with contextlib.suppress(_Captured):
                        model(ids, use_cache=False)
        finally:
            handle.remove()


def _replayable(model, spec: SteeringSpec | None, start: LayerInputs | None) -> bool:
    """Whether every intervention of ``spec`` is at ``start``'s layer at a site after its scan: then that
    scan's inputs are the unsteered ones, and its output can be recorded once and replayed."""
    if start is None or spec is None or not spec.interventions:
        return False
    arch = describe_model(model)
    return all(
        iv.layers == (start.layer,)
        and site_row(iv.site, arch.family, arch.architecture).reach not in SCAN_INPUT_REACHES
        for iv in spec.interventions
    )


class _Replay:
    """Which batch runs now (set by the caller before each)."""

    batch = 0


@contextlib.contextmanager
def _scan_replay(model, start: LayerInputs) -> Iterator[_Replay]:
    """While open, the scan function of ``start``'s layer returns, for each batch, what it returned the
    first time (``start.scans``), computing it only then: the scan's inputs must be the unsteered ones
    (``_replayable``). Enter it before ``steer``: the steering's own scan wrappers then wrap it, so their
    output scaling applies to the replayed output, which itself is never steered (swap_during_calls: the
    later-installed swap is the outer one)."""
    replay = _Replay()
    mixer = mamba_mixers(model)[start.layer]
    module_dict, (scan_name, _, _) = scan_functions(mixer, describe_model(model).family)

    def replacements(current: dict[str, Any]) -> dict[str, Any]:
        scan, calls = current[scan_name], itertools.count()  # calls: a mixer forward may call it twice

        def replayed(*args: Any, **kwargs: Any) -> Any:
            key = (replay.batch, next(calls))
            if key not in start.scans:
                start.scans[key] = scan(*args, **kwargs)
            return start.scans[key]

        return {scan_name: replayed}

    handles = swap_during_calls(mixer, module_dict, replacements)
    try:
        yield replay
    finally:
        for handle in reversed(handles):
            handle.remove()


def _logits(
    model, ids: torch.Tensor, start: tuple[LayerInputs, int] | None, keep: torch.Tensor
) -> torch.Tensor:
    """Logits at the positions ``keep`` (1-D, the same for every document): the vocabulary projection,
    as wide as the rest of a small model together, runs only where an answer token is predicted
    (transformers' ``logits_to_keep`` on a whole forward, which applies each model's own logit scaling)."""
    if start is None:
        return model(ids, use_cache=False, logits_to_keep=keep).logits
    inputs, batch = start
    hidden = _through_blocks(model, inputs.hidden[batch], inputs.layer, len(model.base_model.layers))
    hidden = model.base_model.norm_f(hidden[:, keep])
    return model.lm_head(hidden.to(model.lm_head.weight.dtype))


def _answer_loss(model, ids, labels, start=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per document of a batch: summed answer-token cross-entropy (b,) and whether every answer token is
    the greedy choice (b,)."""
    # the positions that predict an answer token of some document of the batch
    keep = torch.nonzero((labels[:, 1:] != -100).any(dim=0)).flatten()
    logits = _logits(model, ids, start, keep).float()
    target = labels[:, 1:][:, keep]
    loss = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none").sum(1)
    right = ((logits.argmax(-1) == target) | (target == -100)).all(dim=1)
    return loss, right


@dataclass(frozen=True)
class PerDocument:
    """One entry per document, in the order of the batches: what paired statistics compare."""

    loss: torch.Tensor  # (docs,) summed answer-token cross-entropy
    tokens: torch.Tensor  # (docs,) answer tokens
    right: torch.Tensor  # (docs,) bool: the whole answer is the greedy (teacher-forced) choice

    @property
    def mean_loss(self) -> torch.Tensor:
        """(docs,) each document's mean answer-token loss."""
        return self.loss / self.tokens.clamp(min=1)

    def summary(self) -> LossAccuracy:
        return LossAccuracy(float(self.loss.sum() / self.tokens.sum()), float(self.right.float().mean()))


def per_document(
    model,
    batches: Batches,
    spec: SteeringSpec | None = None,
    start: LayerInputs | None = None,
    advance: Advance = _nothing,
) -> PerDocument:
    """Each document's answer loss, answer tokens and correctness on ``batches``; ``start``: run from that
    cached layer input (spec steers there or later; where it steers only after that layer's scan, the
    scan's unsteered output is computed once per batch and replayed: ``_scan_replay``); ``advance`` after
    each batch."""
    losses, tokens, rights = [], [], []
    replaying = _scan_replay(model, start) if _replayable(model, spec, start) else contextlib.nullcontext()
    with torch.no_grad(), replaying as replay, steer(model, spec):
        for i, (ids, labels) in enumerate(batches):
            if replay is not None:
                replay.batch = i
            loss, right = _answer_loss(model, ids, labels, None if start is None else (start, i))
            losses.append(loss.double().cpu())
            tokens.append((labels[:, 1:] != -100).sum(1).cpu())
            rights.append(right.cpu())
            advance()
    return PerDocument(torch.cat(losses), torch.cat(tokens), torch.cat(rights))


def evaluate(
    model,
    batches: Batches,
    spec: SteeringSpec | None = None,
    start: LayerInputs | None = None,
    advance: Advance = _nothing,
) -> LossAccuracy:
    """Loss and accuracy on ``batches``; ``start``: run from that cached layer input (spec steers there
    or later); ``advance`` after each batch."""
    return per_document(model, batches, spec, start, advance).summary()


def _valid_positions(labels: torch.Tensor) -> torch.Tensor:
    """(b, l) True up to each document's last answer token (the padding after it is excluded)."""
    return (labels != -100).flip(1).cumsum(1).flip(1) > 0


def activation_variance(
    model, batches: Batches, pairs: list[Pair], advance: Advance = _nothing
) -> dict[Pair, torch.Tensor]:
    """Per-channel variance across documents of the token-averaged activation at each pair (``advance``
    after each batch)."""
    bad = [p for p in pairs if p[1] not in OUTPUT_SITES]
    if bad:
        raise ValueError(f"activation variance reads only {OUTPUT_SITES}, not {bad}")
    means: dict[Pair, list[torch.Tensor]] = {p: [] for p in pairs}
    mask: list[torch.Tensor] = []

    def recorder(pair: Pair):
        def hook(module, args, output):
            output = block_hidden(output)
            m = mask[0][..., None].to(output.dtype)  # (b, l, 1)
            means[pair].append(((output * m).sum(1) / m.sum(1)).float())  # (b, d)

        return hook

    layers, mixers = model.base_model.layers, mamba_mixers(model)
    handles = [
        (mixers[layer] if site == "mixer_out" else layers[layer]).register_forward_hook(
            recorder((layer, site))
        )
        for layer, site in pairs
    ]
    try:
        with torch.no_grad():
            for ids, labels in batches:
                mask[:] = [_valid_positions(labels)]
                model(ids, use_cache=False)
                advance()
    finally:
        for handle in handles:
            handle.remove()
    return {p: torch.cat(v).var(dim=0) for p, v in means.items()}


@dataclass(frozen=True)
class Attribution:
    """Per document d and channel c: dℓ_d/ds_c at s = 1 (``per_doc``, (documents, channels)); g = Σ_d, and
    F = Σ_d (dℓ_d/ds_c)², the spread of the per-document parts."""

    per_doc: torch.Tensor

    @property
    def grad(self) -> torch.Tensor:
        return self.per_doc.sum(0)

    @property
    def fisher(self) -> torch.Tensor:
        return self.per_doc.square().sum(0)

    @property
    def amplify_benefit(self) -> torch.Tensor:
        """-g / sqrt(F): how consistently the documents want the channel amplified. Unlike g it does not
        shrink with the channel's size (a channel damped 5x has g and sqrt(F) both 5x smaller), so weak
        channels that every document needs rank first. Between -sqrt(n_docs) and sqrt(n_docs)."""
        return -self.grad / self.fisher.sqrt().clamp(min=1e-20)


def attribution(
    model, batches: Batches, pairs: list[Pair], arch: ArchInfo, advance: Advance = _nothing
) -> dict[Pair, Attribution]:
    """Per-document gradients for every channel of every pair (L = Σ_d ℓ_d: the mean answer-token loss),
    from one forward and backward pass per batch with one factor per document (all ones); ``advance``
    after each batch."""
    device = next(model.parameters()).device
    tokens = sum(int((labels[:, 1:] != -100).sum()) for _, labels in batches)
    per_doc: dict[Pair, list[torch.Tensor]] = {p: [] for p in pairs}
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for ids, labels in batches:
            factors = {
                p: torch.ones(ids.shape[0], 1, arch.site_width(p[1]), device=device, requires_grad=True)
                for p in pairs
            }
            with torch.enable_grad(), steer_factors(model, factors):
                loss, _ = _answer_loss(model, ids, labels)
                (loss.sum() / tokens).backward()
            for p, f in factors.items():
                per_doc[p].append(f.grad[:, 0, :].float())  # (b, c)
            advance()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return {p: Attribution(torch.cat(v)) for p, v in per_doc.items()}


def gradient_at(
    model, batches: Batches, pair: Pair, factor: torch.Tensor, start: LayerInputs | None = None
) -> torch.Tensor:
    """dL/ds_c for every channel of ``pair`` at the point where its channels are scaled by ``factor``
    ((width,), fp32), L the mean answer-token loss: first order, but around a point far from scale 1."""
    device = next(model.parameters()).device
    tokens = sum(int((labels[:, 1:] != -100).sum()) for _, labels in batches)
    grad = torch.zeros_like(factor, dtype=torch.float32)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for i, (ids, labels) in enumerate(batches):
            f = factor.detach().float().to(device).requires_grad_(True)
            with torch.enable_grad(), steer_factors(model, {pair: f}):
                loss, _ = _answer_loss(model, ids, labels, None if start is None else (start, i))
                (loss.sum() / tokens).backward()
            grad += f.grad.float().cpu()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return grad


def sign_flips(n_docs: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """NULL_DRAWS × n_docs random signs (seed NULL_SEED): the same draws for every pair of a run."""
    generator = torch.Generator().manual_seed(NULL_SEED)
    return (torch.randint(0, 2, (NULL_DRAWS, n_docs), generator=generator) * 2 - 1).float().to(device)


def _top_mean(values: torch.Tensor, k: int) -> torch.Tensor:
    return values.topk(k, dim=-1).values.mean(-1)


def rank_attribution(scores: Attribution, flips: torch.Tensor | None = None) -> Ranking:
    """Channels by -g/√F (amplify) or g/√F (damp). The pair's score in a direction is the mean of its best
    SITE_TOP channel values, as a z-score against the same mean under random sign flips of the
    per-document gradients (what the statistic looks like when the documents agree only by chance; √F
    is unchanged by the flips). The raw mean favours wide sites: the best 8 of 448 channels reach √n by
    chance, the best 8 of 16 cannot. The pair's score is the better direction's z."""
    amplify = scores.amplify_benefit
    damp = -amplify
    top = min(SITE_TOP, amplify.numel())
    per_doc = scores.per_doc
    if flips is None:
        flips = sign_flips(per_doc.shape[0], per_doc.device)
    null = -(flips @ per_doc) / scores.fisher.sqrt().clamp(min=1e-20)  # (draws, channels)
    null_top = torch.maximum(_top_mean(null, top), _top_mean(-null, top))
    centre, spread = float(null_top.mean()), float(null_top.std()) if null_top.numel() > 1 else 0.0
    z = {
        direction: (float(_top_mean(values, top)) - centre) / max(spread, 1e-12)
        for direction, values in (("amplify", amplify), ("damp", damp))
    }
    direction = max(z, key=z.get)
    return Ranking(
        amplify=amplify.argsort(descending=True).tolist(),
        damp=damp.argsort(descending=True).tolist(),
        score=z[direction],
        benefit={"amplify": amplify.tolist(), "damp": damp.tolist()},
        direction=direction,
    )


def rank_variance(var: torch.Tensor) -> Ranking:
    """Both directions rank by variance; the score is how peaked the top channels are (top mean / mean)."""
    order = var.argsort(descending=True).tolist()
    top = min(SITE_TOP, var.numel())
    score = float(var[order[:top]].mean() / var.mean().clamp(min=1e-12))
    return Ranking(amplify=order, damp=list(order), score=score)


def verify(
    model,
    batches: Batches,
    base: LossAccuracy,
    pair: Pair,
    ranking: Ranking,
    n: int,
    start: LayerInputs | None = None,
    directions: tuple[str, ...] = ("amplify", "damp"),
    advance: Advance = _nothing,
) -> dict[str, dict[int, float]]:
    """Measured loss decrease of the top ``n`` channels of each direction, one real intervention each
    (``advance`` after each): amplify by VERIFY_AMPLIFY, ablate to 0. The verified channels move to the
    front in measured order, and ``ranking.helpful`` counts those that lowered the loss (a channel count
    the sweep tries)."""
    layer, site = pair
    measured: dict[str, dict[int, float]] = {}
    for direction, scale in (("amplify", VERIFY_AMPLIFY), ("damp", 0.0)):
        if direction not in directions:
            continue
        order = getattr(ranking, direction)
        gains = {}
        for channel in order[:n]:
            spec = SteeringSpec.single(layer=layer, site=site, channels=[channel], scale=scale)
            gains[channel] = base.loss - evaluate(model, batches, spec, start).loss
            advance()
        measured[direction] = gains
        verified = sorted(gains, key=gains.get, reverse=True)
        setattr(ranking, direction, verified + order[n:])
        ranking.helpful = {**(ranking.helpful or {}), direction: sum(gain > 0 for gain in gains.values())}
    return measured


def dt_bias_layers(model, arch: ArchInfo) -> list[dict[str, float]]:
    """Per Mamba layer (every layer of a pure model): its index, mean |b|, variance and coefficient of
    variation (std / mean |b|) of the Δ bias."""
    stats = []
    for layer, mixer in mamba_mixers(model).items():
        bias = (mixer.dt_bias if arch.family == "mamba2" else mixer.dt_proj.bias).detach().float()
        mean_abs = float(bias.abs().mean())
        var = float(bias.var())
        stats.append(
            {"layer": layer, "mean_abs": mean_abs, "var": var, "cv": var**0.5 / max(mean_abs, 1e-12)}
        )
    return stats


def dt_bias_layer(stats: list[dict[str, float]]) -> int:
    """The layer whose Δ bias varies most relative to its size; the paper's fallback, the Mamba layer
    int(0.83 × their number) deep, when every layer is alike (an untrained model)."""
    cvs = [s["cv"] for s in stats]
    if max(cvs) - min(cvs) < 1e-6:
        return stats[int(0.83 * len(stats))]["layer"]
    return stats[max(range(len(cvs)), key=cvs.__getitem__)]["layer"]
