"""``find``: score every (layer, site), sweep channel count and scale on the calibration data, and write
the winning steering spec with its provenance, the raw scores (JSON) and a layer × site heatmap (PNG).

Method ``causal`` first screens the ``screen`` best-scored pairs with real interventions (their top 1,
2, 4 and 8 channels at the reference scale, in the direction their attribution favours) and sweeps the
``candidates`` pairs whose screen lowered the calibration loss most, in that direction only. Method
``outlier`` (the default) screens those pairs' amplify rows at x3 and x8, also the ``screen`` pairs with
the steepest single-channel gradient (``_steepest``; their steepest channels first) and the pairs with
low-outlier channels (``_outlier_screen``), and sweeps the best of all screened rows. ``probe`` is
described at ``_probe``; the other methods sweep their ``candidates`` best-scored pairs in both
directions.

The sweep, per pair and direction: first the number of channels k at a reference scale, then the scale
at the best k; finally k again at the scale of the best point. The chosen configuration is the one with
the lowest calibration loss among every point evaluated (screen included); if none beats the unsteered
model, or (with validation documents) it does not also lower the loss on those, the spec written is the
identity (scale 1.0) and a warning (``IdentityWritten``) says so.

Progress: one bar per phase (unsteered, attribution or variance, screen, verify, sweep, re-choose k,
validation), each with its number of batches or configurations fixed when the phase starts.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lm_eval_ssmsteer.files import atomic_write
from lm_eval_ssmsteer.finder import magnitude, methods, paired
from lm_eval_ssmsteer.finder.data import CalibrationData, FinderError
from lm_eval_ssmsteer.finder.methods import (
    METHODS,
    STEEP_ORDERS,
    VALIDATE_CHOICES,
    LossAccuracy,
    Pair,
    Ranking,
)
from lm_eval_ssmsteer.mamba.arch import ArchInfo, describe_model
from lm_eval_ssmsteer.mamba.fastscan import fast_scan_if_allowed
from lm_eval_ssmsteer.mamba.sites import GATED_NORM_INPUT, OUTPUT_SITES, SITES, site_row
from lm_eval_ssmsteer.spec import SteeringSpec

K_GRID = (1, 2, 4, 8, 16, 32)
SCREEN_K = tuple(k for k in K_GRID if k <= methods.SITE_TOP)
DIRECTIONS = ("amplify", "damp")
AMPLIFY_SCALES = (1.5, 2.0, 3.0, 5.0, 8.0)
DAMP_SCALES = (0.0, 0.5)
REFERENCE_SCALE = {"amplify": 3.0, "damp": 0.0}
OTHER_SCALES = {
    "amplify": tuple(s for s in AMPLIFY_SCALES if s != REFERENCE_SCALE["amplify"]),
    "damp": tuple(s for s in DAMP_SCALES if s != REFERENCE_SCALE["damp"]),
}
PROBE_SCALE = 8.0  # probes scale far from 1, where a saturated damage shows
# max_scale (an option): the sweep's amplifying scales go on past x8 along this ladder, up to max_scale; a
# damping by p is undone only at 1/p (x50 for x0.02), which x8 does not reach
WIDE_SCALES = (13.0, 20.0, 32.0, 50.0, 80.0)
MAX_SCALE_LIMIT = 100
PROBE_K = (4, 16)  # channels per probe, in attribution order (``_probe_counts`` for narrow sites)
PROBE_CANDIDATES = 3  # pairs given a coordinate search: the best 3 by probe and the best 3 by attribution
PROBE_ROUNDS = 3
# descend (an option): Adam on a pair's per-channel log-scales with an L1 pull toward scale 1, then the
# channels it amplified past DESCEND_KEEP swept at one scale each (the spec format keeps one scale)
DESCEND_LR = 0.3
DESCEND_L1 = 0.002
DESCEND_KEEP = 1.5
DESCEND_SCALES = (2.0, 3.0, 5.0, 8.0)
DESCEND_PAIRS = 2  # the sweep's best pair and the outlier screen's first
# blocks (an option): every distinct pair's channels cut into N seeded random blocks, each at PROBE_SCALE;
# the BLOCK_REFINE pairs whose best block lowered the loss most grow a union of their gaining blocks and get
# the coordinate search from it
BLOCK_SEED = 0
BLOCK_REFINE = 2
BLOCK_METHODS = ("causal", "outlier")  # the methods with screens the block rows compete in
OUTLIER_PAIRS = 4  # method outlier: the pairs with the most extreme small channels screened
OUTLIER_REFINE = 2  # of those, the most extreme get the coordinate search from their best screened point
BALANCE_PAIRS = 2  # find --balance: the balanced pairs (Mamba-2 ssm_out, gate) screened and refined besides
# method outlier: the best pair's best points at up to this many other channel counts are validated too
VALIDATE_COUNTS = 4
RESTORE_LIMIT = (1.5, 64.0)  # the "restore to the median channel" scale is clipped to this range
NARROW_COUNTS = (1, 2, 4, 8, 16)  # the narrow screen: a narrow pair's smallest k channels, k up to a quarter
NARROW_WIDTH = 64  # method outlier's narrow screen by default: the sites at most this many channels wide
# the narrow screen tries a pair's smallest k channels only if restoring them to the median channel takes
# at least this scale: channels less than this far below the median are not damped enough to restore, and in
# an undamaged narrow site (ref-mamba1's B and C: at most x3.5 on the survey's documents) nothing is left
# to evaluate
NARROW_FLOOR = 4.0
# grow: from the sweep's best amplifying point, rounds of a gradient at that point and the outside channels
# it asks up most added at the point's scale, GROW_COUNTS of them, each evaluated: for a damage spread over
# many channels of a wide site whose largest part one or two carry (the sweep's point)
GROW_COUNTS = (1, 2, 4, 8)
# method outlier grows this many rounds by default (docs/finder.md, "Grow": chosen by the extra survey set,
# drawn after grow was built, on the rule fixed before it ran)
GROW_ROUNDS = 3
NO_GAIN = "no calibration gain"
REJECTED_BY_VALIDATION = "rejected by validation"


class IdentityWritten(UserWarning):
    """The spec is the identity (scale 1.0): the best configuration was not kept."""


class ValidationUndecided(UserWarning):
    """The validation documents could not tell whether the written configuration helps."""


def paired_words(checked: dict[str, Any]) -> str:
    """The validation's paired result in words: loss before -> after, the per-document decrease."""
    d = checked["loss_decrease"]
    return (
        f"loss {checked['loss']['unsteered']:.4f} -> {checked['loss']['steered']:.4f}; per-document decrease "
        f"{d['mean']:+.4f}, {d['level']:.0%} interval [{d['low']:+.4f}, {d['high']:+.4f}], lower on "
        f"{d['larger']} and higher on {d['smaller']} of {d['n']} documents"
    )


@dataclass
class FindResult:
    spec: SteeringSpec
    base: LossAccuracy
    best: LossAccuracy
    scores: dict[str, Any]  # the raw scores document
    heatmap: dict[Pair, float] = field(default_factory=dict)
    # why the best configuration was not written (NO_GAIN, REJECTED_BY_VALIDATION); None if it was
    rejected: str | None = None


class _Progress:
    """One tqdm bar per phase of the search, its total fixed when the phase starts; ``advance`` moves it
    one item (a batch, or one configuration evaluated on every batch), so that tqdm shows rate and ETA."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None

    @contextmanager
    def phase(self, name: str, total: int, unit: str):
        self._bar = tqdm(total=total, desc=f"find: {name}", unit=unit, disable=not (self.enabled and total))
        try:
            yield
        finally:
            self._bar.close()
            self._bar = None

    def advance(self, what: str = "") -> None:
        if what:
            self._bar.set_postfix_str(what, refresh=False)
        self._bar.update()


def check_request(method: str, sites: list[str], arch: ArchInfo | None = None) -> None:
    """Every argument that can be wrong, checked before any long work."""
    if method not in METHODS:
        raise FinderError(f"--method: {method!r} is not a method; allowed: {', '.join(METHODS)}")
    if not sites:
        raise FinderError(f"--sites: no site given; allowed: {', '.join(SITES)}")
    unknown = [s for s in sites if s not in SITES]
    if unknown:
        raise FinderError(f"--sites: unknown site(s) {unknown}; allowed: {', '.join(SITES)}")
    if method == "variance" and not set(sites) & set(OUTPUT_SITES):
        raise FinderError(
            f"--sites {sites} with --method variance: variance reads only {', '.join(OUTPUT_SITES)}"
        )


# method outlier validates this many pairs and chooses among them by the paired comparison by default
# (docs/finder.md, "The next set": chosen by a survey set drawn after it, on the rule fixed before it ran)
VALIDATE_PAIRS = 6


def default_validation(
    method: str, validate_top: int | None = None, validate_choice: str | None = None
) -> tuple[int, str]:
    """(validate_top, validate_choice) where either is None: for method outlier VALIDATE_PAIRS pairs and
    the paired choice, for the others 1 pair (the calibration's best); a count given without a choice gets
    the paired choice for outlier where it is 2 or more, "gain" otherwise."""
    if validate_top is None:
        validate_top = VALIDATE_PAIRS if method == "outlier" else 1
    if validate_choice is None:
        validate_choice = "paired" if method == "outlier" and validate_top >= 2 else "gain"
    return validate_top, validate_choice


def check_validate_choice(validate_top: int, validate_choice: str, flags: bool = False) -> None:
    """A FinderError unless ``validate_choice`` is one of VALIDATE_CHOICES and, where it is not "gain",
    ``validate_top`` is 2 or more (the choice is among validated pairs). Named as ``find``'s arguments, or
    with ``flags`` as the command line's. The one place this rule is checked."""
    top_field, named = (
        ("--validate-top", f"--validate-choice {validate_choice}")
        if flags
        else ("validate_top", f"validate_choice: {validate_choice!r}")
    )
    if validate_choice not in VALIDATE_CHOICES:
        raise FinderError(f"{named}; allowed: {', '.join(VALIDATE_CHOICES)}")
    if validate_choice != "gain" and validate_top < 2:
        raise FinderError(
            f"{named} chooses among validated pairs; allowed with {top_field} 2 or more, not {validate_top!r}"
        )


def check_max_scale(max_scale: object, field: str = "max_scale") -> int:
    """``max_scale`` when it is allowed (a whole number from PROBE_SCALE to MAX_SCALE_LIMIT); a FinderError
    naming ``field``, the value and the range otherwise. The one place that range is checked."""
    if (
        isinstance(max_scale, bool)
        or not isinstance(max_scale, int)
        or not PROBE_SCALE <= max_scale <= MAX_SCALE_LIMIT
    ):
        raise FinderError(
            f"{field}: {max_scale!r}; allowed: a whole number from {PROBE_SCALE:g} to {MAX_SCALE_LIMIT}"
        )
    return max_scale


def wide_scales(max_scale: int) -> tuple[float, ...]:
    """The amplifying scales past PROBE_SCALE that a sweep with ``max_scale`` also tries: the WIDE_SCALES
    up to it, and itself (none at the default 8)."""
    check_max_scale(max_scale)
    ladder = [s for s in WIDE_SCALES if s < max_scale]
    return tuple(ladder + [float(max_scale)]) if max_scale > PROBE_SCALE else ()


def check_output(out: Path) -> None:
    """The spec and its companion files can be written (tried with a probe file, removed at once)."""
    if out.is_dir():
        raise FinderError(f"--out: {str(out)!r} is a folder; give the spec's file name, e.g. spec.json")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FinderError(f"--out: folder {str(parent)!r} does not exist")
    probe = parent / f".{out.name}.probe"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise FinderError(f"--out: cannot write in {str(parent)!r} ({exc.strerror})") from None


def _gap_k(benefit: list[float], order: list[int], limit: int) -> int | None:
    """The k after which the positive expected benefit drops the most (relative), if any."""
    values = [benefit[c] for c in order[: limit + 1]]
    best, best_ratio = None, 1.5
    for k in range(1, len(values)):
        if values[k - 1] <= 0:
            break
        ratio = values[k - 1] / max(values[k], values[k - 1] * 1e-3)
        if ratio > best_ratio:
            best, best_ratio = k, ratio
    return best


def find(
    model,
    data: CalibrationData,
    sites: list[str] | None = None,
    method: str = methods.DEFAULT_METHOD,
    candidates: int = 1,
    verify: int = 4,
    max_channels: int = 32,
    model_name: str = "model",
    progress: bool = True,
    screen: int = 3,
    validation: CalibrationData | None = None,
    validate_top: int | None = None,
    validate_choice: str | None = None,
    steep_order: str = "gradient",
    descend: int = 0,
    blocks: int = 0,
    max_scale: int = 8,
    narrow: int | None = None,
    narrow_floor: float = NARROW_FLOOR,
    grow: int | None = None,
    balance: bool = False,
) -> FindResult:
    """LossAccuracy, screen (causal), sweep on ``data`` (calibration only) and return the best spec; writes
    nothing. With ``validation`` (other calibration documents), the best configuration must also lower the
    loss there, else the identity is returned (the sweep's choice overfits a few documents).
    ``validate_top`` N > 1: the best configuration of each of the N (layer, site) pairs that lowered the
    calibration loss most is scored on the validation documents, and the one that lowers the validation
    loss most is chosen (then judged as above); with ``validate_choice`` "paired" it replaces the
    calibration's choice only when the paired comparison of the two on the validation documents calls it
    better (a largest mean gain alone is often noise on a few documents). Either None: the method's
    default (``default_validation``: 6 pairs and the paired choice for outlier). ``steep_order`` (method
    ``outlier``): how the channels of a pair chosen for its steepest channel are ordered before the first
    1, 2, 4, 8 are screened, one of STEEP_ORDERS: ``gradient`` (most negative first, the default),
    ``size`` (smallest first, as the magnitude pass reads them) or ``ratio`` (gradient over size, most
    negative first: a damped channel's gradient shrinks with its activation, the ratio does not).
    ``descend`` N > 0: after the sweep, N Adam steps on the per-channel log-scales of the sweep's best
    pair (and, for ``outlier``, of the pair the outlier screen ranks first), with an L1 pull toward 1; the
    channels a descent amplifies past DESCEND_KEEP are then evaluated at DESCEND_SCALES, and each
    descended pair's best point is scored on the validation documents beside the sweep's best
    (``_validation_pool``). It reads the loss away from scale 1, where a saturated damage is flat.
    ``blocks`` N > 0 (methods ``causal`` and ``outlier``): a block screen (``_block_screen``) beside the
    others, every distinct pair's channels in N blocks at PROBE_SCALE, which sees a damage the attribution
    and the channel sizes miss. ``max_scale`` S > 8: the sweep also tries the best channel count at the
    WIDE_SCALES up to S, and at S (``wide_scales``), so a strong damping can be undone; then the best
    amplifying point of each pair the validation may choose from, whatever stage wrote it, is tried at
    those scales too, with its own channels (``_ladder``). ``narrow`` W > 0 (method ``outlier``; None: the
    method's default, ``default_narrow``): a narrow screen (``_narrow_screen``) beside the others, each
    pair of a site at most W channels wide with its smallest channels restored to the median channel,
    whether or not they are outliers, where that takes a scale of at least ``narrow_floor``. ``grow`` N > 0
    (None: the method's default, ``default_grow``): after the sweep (and the descent), up to N rounds from
    its best amplifying point (``_grow``): a gradient at that point, then the 1, 2, 4, 8 outside channels it
    asks up most added at the point's scale; the best addition is kept while it lowers the loss. With
    ``validation``, grow's end point is one more point the validation documents may choose (as another
    channel count is: only where they call it better and it gains more than the choice), and its steps are
    not candidates. ``balance`` (method ``outlier``): on Mamba-2 the ``ssm_out`` channel sizes (y) and the
    ``gate`` ones, read as the gated product y·SiLU(z), are each set against the line of log size on the log
    norm of what reads them (``magnitude.balanced_size``), so a channel that arrives weak where it is read
    strongly is a low outlier and a naturally quiet one is not; the BALANCE_PAIRS most extreme such pairs
    the outlier screen does not choose anyway are screened and refined besides (elsewhere, and on Mamba-1,
    everything is as without it)."""
    sites = list(SITES if sites is None else sites)
    check_request(method, sites)
    validate_top, validate_choice = default_validation(method, validate_top, validate_choice)
    check_validate_choice(validate_top, validate_choice)
    if steep_order not in STEEP_ORDERS:
        raise FinderError(f"steep_order: {steep_order!r}; allowed: {', '.join(STEEP_ORDERS)}")
    if isinstance(descend, bool) or not isinstance(descend, int) or descend < 0:
        raise FinderError(f"descend: {descend!r}; allowed: a whole number of steps, 0 (off) or more")
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
        raise FinderError(f"blocks: {blocks!r}; allowed: a whole number of blocks a pair, 0 (off) or more")
    if blocks and method not in BLOCK_METHODS:
        raise FinderError(f"blocks: {blocks} with method {method!r}; allowed with methods causal and outlier")
    grow = check_grow(default_grow(method) if grow is None else grow)
    narrow = check_narrow(default_narrow(method) if narrow is None else narrow, method)
    check_narrow_floor(narrow_floor)
    balance = check_balance(balance, method)
    wide = wide_scales(max_scale)
    arch = describe_model(model)
    if method == "variance":
        sites = [s for s in sites if s in OUTPUT_SITES]
    t0 = time.time()
    device = next(model.parameters()).device
    batches = [(ids.to(device), labels.to(device)) for ids, labels in data.batches()]
    bars = _Progress(progress)

    with fast_scan_if_allowed(model):
        with bars.phase("unsteered", len(batches), "batch"):
            base = methods.evaluate(model, batches, advance=bars.advance)
        rankings, raw = _score(model, batches, arch, method, sites, bars)
        sweep = _Sweep(model, batches, arch, rankings, bars.advance, wide)
        screened: list[dict[str, Any]] = []
        reordered: set[Pair] = set()  # pairs whose channel order now comes from their sizes or raw gradient
        outliers: dict[Pair, magnitude.Outliers] = {}
        sizes: dict[Pair, torch.Tensor] = {}  # channel sizes, where a method measures them
        if method in ("causal", "outlier"):
            shortlist = _distinct_best(rankings, max(screen, candidates))
            # outlier also screens the pairs with the steepest single channel, at x8 as well: a damage
            # that saturates is flat at scale 1 for the consistency score but not for the raw gradient
            grads = (
                {p: torch.tensor(raw["grad"][f"{p[0]}/{p[1]}"]) for p in rankings}
                if method == "outlier"
                else {}
            )
            steep = _steepest(grads, screen, shortlist) if method == "outlier" else []
            # find --balance: the pairs whose sizes are set against what reads them, screened besides
            balanced = frozenset(balanced_pairs(arch, list(rankings))) if balance else frozenset()
            # the channel sizes (one pass) serve the outlier screen below, and here any order but gradient
            sizes = {}
            if method == "outlier":
                sizes = _sizes(model, batches, arch, list(rankings), bars, balanced)
            orders = {p: _steep_channels(grads[p], sizes[p], steep_order) for p in steep}

            def scales(direction: str) -> list[float]:
                extra = method == "outlier" and direction == "amplify"
                return [REFERENCE_SCALE[direction]] + ([PROBE_SCALE] if extra else [])

            directions = {
                p: "amplify" if p in orders else rankings[p].direction or "amplify" for p in shortlist + steep
            }
            total = sum(len(_screen_counts(arch, p)) * len(scales(d)) for p, d in directions.items())
            layers = sorted({pair[0] for pair in directions})
            with bars.phase("layer inputs", len(layers), "layer"):
                for layer in layers:  # lowest first, each from the one before: the blocks between run once
                    sweep.start(layer)
                    bars.advance(f"layer {layer}")
            with bars.phase("screen", total, "config"):
                for pair in shortlist + steep:
                    direction = directions[pair]
                    source = "gradient" if pair in orders else "attribution"
                    order = orders[pair] if pair in orders else getattr(rankings[pair], direction)
                    points = [
                        sweep.run_channels(pair, direction, order[:k], scale, "screen")
                        for k in _screen_counts(arch, pair)
                        for scale in scales(direction)
                    ]
                    best_point = min(points, key=lambda point: point["loss"])
                    screened.append(
                        {
                            "layer": pair[0],
                            "site": pair[1],
                            "score": rankings[pair].score,
                            "direction": direction,
                            "loss": best_point["loss"],
                            "k": best_point["k"],
                            "scale": best_point["scale"],
                            "source": source,
                        }
                        | ({"channels": order[: best_point["k"]]} if source == "gradient" else {})
                    )
            if method == "outlier":
                outliers = {p: magnitude.low_outliers(v) for p, v in sizes.items()}
                raw["outliers"] = {
                    f"{p[0]}/{p[1]}": {"channels": o.channels, "z": o.z, "restore": o.restore}
                    for p, o in outliers.items()
                    if o.channels
                }
                screened += _outlier_screen(
                    model, batches, arch, outliers, sweep, bars, max_channels, balanced
                )
                if narrow:
                    rows, raw["narrow"] = _narrow_screen(
                        arch, rankings, sizes, sweep, bars, narrow, narrow_floor
                    )
                    screened += rows
            if blocks:
                rows, raw["blocks"] = _block_screen(
                    model, batches, arch, rankings, sweep, bars, blocks, base.loss, max_channels
                )
                screened += rows
            ranked = _distinct_rows(sorted(screened, key=lambda row: row["loss"]))[:candidates]
            plan = [((row["layer"], row["site"]), (row["direction"],)) for row in ranked]
            for row in ranked:
                pair = (row["layer"], row["site"])
                if row["source"] in ("outliers", "narrow"):  # sweep the pair's channels smallest first
                    first = row.get("channels") or outliers[pair].channels[:max_channels]
                    rest = outliers[pair].order
                elif row["source"] == "gradient":  # steepest gradient first
                    first, rest = row["channels"], orders[pair]
                elif row["source"] == "blocks":  # the refined union first, then the attribution's order
                    first, rest = row["channels"], rankings[pair].amplify
                else:
                    continue
                rankings[pair].amplify = first + [c for c in rest if c not in first]
                rankings[pair].helpful = {"amplify": len(first)}
                reordered.add(pair)
        elif method == "probe":
            screened, plan = _probe(model, batches, arch, rankings, sweep, bars, candidates, max_channels)
        else:
            chosen = _distinct_best(rankings, 1 if method == "dt-bias" else max(1, candidates))
            plan = [(pair, DIRECTIONS) for pair in chosen]
        chosen_pairs = [pair for pair, _ in plan]
        verify_counts = {
            p: min(verify, arch.site_width(p[1]))
            if method in ("causal", "outlier") and p not in reordered
            else 0
            for p in chosen_pairs
        }
        verified = {}
        if any(verify_counts.values()):
            with bars.phase("verify", sum(verify_counts[p] * len(d) for p, d in plan), "config"):
                for pair, directions in plan:
                    if not verify_counts[pair]:
                        continue
                    verified[f"{pair[0]}/{pair[1]}"] = methods.verify(
                        model,
                        batches,
                        base,
                        pair,
                        rankings[pair],
                        verify_counts[pair],
                        sweep.start(pair[0]),
                        directions,
                        partial(bars.advance, f"layer {pair[0]} {pair[1]}"),
                    )
        sweep.sweep(plan, max_channels, bars)
        if descend:
            first = min(sweep.curve, key=lambda point: point["loss"])
            targets = [(first["layer"], first["site"])]
            if any(o.channels for o in outliers.values()):  # method outlier
                top = max(outliers, key=lambda p: outliers[p].score)
                targets += [top] if top not in targets else []
            raw["descend"] = {}
            with bars.phase("descend", descend * len(targets[:DESCEND_PAIRS]), "step"):
                for pair in targets[:DESCEND_PAIRS]:
                    channels, factors = _descend(
                        model, batches, arch, pair, descend, sweep.start(pair[0]), max_channels, bars.advance
                    )
                    raw["descend"][f"{pair[0]}/{pair[1]}"] = {"channels": channels, "scales": factors}
                    for scale in DESCEND_SCALES if channels else ():
                        with sweep.quiet():
                            sweep.run_channels(pair, "amplify", channels, scale, "descend")
        if grow:
            raw["grow"] = _grow(model, batches, arch, sweep, grow, max_channels, bars, sizes)
        if wide:  # the pairs the validation may choose from; without validation documents, the best alone
            _ladder(sweep, base.loss, max(1, validate_top) if validation is not None else 1, wide, bars)
        curve = sweep.curve
        best = min(curve, key=lambda point: point["loss"])
        improved = best["loss"] < base.loss
        checked = None
        if validation is not None and improved:
            held_out = [(ids.to(device), labels.to(device)) for ids, labels in validation.batches()]
            # grow's steps are not candidates (each is its start plus a few channels, at counts that would
            # crowd the other counts out); its end point is one, among the other counts
            ungrown = [point for point in curve if point["stage"] != "grow"]
            pool = _validation_pool(ungrown, base.loss, validate_top)
            pairs_pool = len(pool)
            if method == "outlier":  # the channel count too is chosen on the validation documents
                pool += _other_counts(ungrown, pool[0], base.loss, VALIDATE_COUNTS)
            pool += _grown(curve, raw.get("grow"))
            starts = _Starts(model, held_out, arch)
            with bars.phase("validation", (1 + len(pool)) * len(held_out), "batch"):
                v_base = methods.per_document(model, held_out, advance=bars.advance)
                validated = []
                for point in pool:
                    candidate = SteeringSpec.single(
                        point["layer"], point["site"], point["channels"], point["scale"]
                    )
                    start = starts(point["layer"])  # from the cached input of the point's layer
                    v_steered = methods.per_document(model, held_out, candidate, start, bars.advance)
                    # per document: how much the configuration lowers its mean answer loss
                    gain = paired.paired_difference(v_steered.mean_loss, v_base.mean_loss)
                    validated.append((point, v_steered, gain))
            (best, v_steered, gain), switch = _choose_validated(validated[:pairs_pool], validate_choice)
            # another channel count replaces it only when the validation documents call that count
            # better and it gains more, and never when they reject the best point: choosing among the
            # counts on these documents must not overturn their judgement of the calibration's choice
            recounted = [row for row in validated[pairs_pool:] if row[2].decision == paired.BETTER]
            if gain.decision != paired.WORSE and recounted and max(r[2].mean for r in recounted) > gain.mean:
                best, v_steered, gain = max(recounted, key=lambda row: row[2].mean)
            checked = {
                "source": validation.source,
                "sha256": validation.sha256,
                "documents": len(validation.examples),
                "loss": {"unsteered": v_base.summary().loss, "steered": v_steered.summary().loss},
                "accuracy": {"unsteered": v_base.summary().accuracy, "steered": v_steered.summary().accuracy},
                "loss_decrease": gain.as_dict(),
                "decision": gain.decision,
                "held": gain.decision == paired.BETTER,
                **({"choice": validate_choice} if validate_choice != "gain" else {}),
                # paired: the validation gain of the pair that gained most over the calibration's choice
                **({"switch": switch.as_dict()} if switch is not None else {}),
                "candidates": [
                    {
                        **{k: point[k] for k in ("layer", "site", "k", "scale")},
                        "calibration_loss": point["loss"],
                        "loss_decrease": g.mean,
                        "decision": g.decision,
                    }
                    for point, _, g in validated
                ],
            }

    rejected = None
    if not improved:
        rejected = NO_GAIN
        warnings.warn(
            "no steering configuration lowered the calibration loss; the spec written is the identity "
            "(scale 1.0), so steering with it changes nothing",
            IdentityWritten,
            stacklevel=2,
        )
    elif checked is not None and checked["decision"] == paired.WORSE:
        improved = False
        rejected = REJECTED_BY_VALIDATION
        warnings.warn(
            f"the best configuration (layer {best['layer']} {best['site']}, {best['k']} channels "
            f"x{best['scale']:g}) lowered the calibration loss but not the loss on the validation "
            f"documents ({paired_words(checked)}); the spec written is the identity (scale 1.0), so "
            "steering with it changes nothing",
            IdentityWritten,
            stacklevel=2,
        )
    elif checked is not None and checked["decision"] == paired.UNDECIDED:
        warnings.warn(
            f"the validation documents cannot decide whether the best configuration (layer {best['layer']} "
            f"{best['site']}, {best['k']} channels x{best['scale']:g}) helps ({paired_words(checked)}); "
            "it is written, marked undecided in its provenance: score it on more documents before trusting "
            "it",
            ValidationUndecided,
            stacklevel=2,
        )
    channels = best["channels"]
    scale = best["scale"] if improved else 1.0
    best_score = LossAccuracy(best["loss"], best["accuracy"]) if improved else base
    layer, site = best["layer"], best["site"]
    ranking = rankings[(layer, site)]
    provenance = {
        "tool": "ssmsteer find",
        "method": method,
        "model": model_name,
        "model_fingerprint": arch.fingerprint(),
        "calibration": {
            "source": data.source,
            "sha256": data.sha256,
            "documents": len(data.examples),
            "answer_tokens": data.n_answer_tokens,
        },
        "scores": {
            "pair_score": ranking.score,
            "direction": best["direction"],
            "channel_benefit": (
                [ranking.benefit[best["direction"]][c] for c in channels] if ranking.benefit else None
            ),
            "candidates": [{"layer": p[0], "site": p[1], "score": rankings[p].score} for p in chosen_pairs],
            "screened": screened,
        },
        "calibration_loss": {"unsteered": base.loss, "steered": best_score.loss},
        "calibration_accuracy": {"unsteered": base.accuracy, "steered": best_score.accuracy},
        "calibration_gain": {
            "loss": base.loss - best_score.loss,
            "accuracy": best_score.accuracy - base.accuracy,
        },
        "validation": checked,
        **({"steep_order": steep_order} if steep_order != "gradient" else {}),
        **({"descend": descend} if descend else {}),
        **({"blocks": blocks} if blocks else {}),
        **({"max_scale": max_scale} if wide else {}),
        **({"narrow": {"width": narrow, "floor": narrow_floor}} if narrow else {}),
        **({"grow": grow} if grow else {}),
        **({"balance": True} if balance else {}),
        "sweep_points": len(curve),
        "seconds": round(time.time() - t0, 1),
    }
    spec = SteeringSpec.from_dict(
        {
            "version": 1,
            "interventions": [
                {"layer": layer, "site": site, "channels": channels, "scale": scale, "positions": "all"}
            ],
            "model": {**arch.fingerprint(), "name": model_name},
            "provenance": provenance,
        }
    )
    scores = {
        "method": method,
        "model": model_name,
        "model_fingerprint": arch.fingerprint(),
        "calibration_sha256": data.sha256,
        "unsteered": {"loss": base.loss, "accuracy": base.accuracy},
        "pairs": {
            f"{p[0]}/{p[1]}": {
                "layer": p[0],
                "site": p[1],
                "score": r.score,
                "direction": r.direction,
                "amplify": r.amplify[:64],
                "damp": r.damp[:64],
                "benefit": r.benefit,
            }
            for p, r in rankings.items()
        },
        "raw": raw,
        "screened": screened,
        "verified": verified,
        "sweep": curve,
        "chosen": {k: best[k] for k in ("layer", "site", "direction", "k", "scale", "loss", "accuracy")},
        "validation": checked,
        "rejected": rejected,
        "steep_order": steep_order,
        "descend": descend,
        "blocks": blocks,
        "max_scale": max_scale,
        "narrow": narrow,
        "narrow_floor": narrow_floor if narrow else None,
        "grow": grow,
        "balance": balance,
    }
    heatmap = {p: r.score for p, r in rankings.items()}
    return FindResult(spec, base, best_score, scores, heatmap, rejected)


def _best_per_pair(curve: list[dict[str, Any]], base_loss: float, n: int) -> list[dict[str, Any]]:
    """The lowest-loss point of each (layer, site) that beat ``base_loss``, best first, at most ``n``."""
    best: dict[tuple[int, str], dict[str, Any]] = {}
    for point in sorted(curve, key=lambda point: point["loss"]):
        if point["loss"] < base_loss:
            best.setdefault((point["layer"], point["site"]), point)
    return list(best.values())[: max(1, n)]


def _ladder(sweep: _Sweep, base_loss: float, n: int, wide: tuple[float, ...], bars: _Progress) -> None:
    """max_scale's ladder for every stage: the best amplifying point of each of the ``n`` best pairs
    (those the validation documents may choose from), with its own channel set, at each scale of ``wide``
    (stage ``ladder``). The sweep's ladder reaches only a ranking's best count; a set the block screen or
    the outlier refinement wrote at x8 would otherwise never be tried past it."""
    tops = [
        point
        for point in _best_per_pair(
            [point for point in sweep.curve if point["stage"] != "descend"], base_loss, n
        )
        if point["direction"] == "amplify"
    ]
    with bars.phase("ladder", len(tops) * len(wide), "config"):
        for point in tops:
            for scale in wide:
                sweep.run_channels(
                    (point["layer"], point["site"]), "amplify", point["channels"], scale, "ladder"
                )


def _choose_validated(validated: list[tuple], choice: str) -> tuple[tuple, Any]:
    """The validated row (point, per-document scores, gain over the unsteered) ``find`` keeps, and the
    paired comparison that decided it (None when none was made). ``validated[0]`` is the calibration's
    choice. "gain": the row whose mean gain is largest. "paired": that row only when, document by document,
    it lowers the validation loss more than the calibration's choice does (the comparison's decision is
    BETTER); else the calibration's choice."""
    top = max(validated, key=lambda row: row[2].mean)
    if choice == "gain" or top is validated[0]:
        return top, None
    # positive: the replacement's loss is lower than the calibration's choice's on that document
    switch = paired.paired_difference(top[1].mean_loss, validated[0][1].mean_loss)
    return (top if switch.decision == paired.BETTER else validated[0]), switch


def _validation_pool(curve: list[dict[str, Any]], base_loss: float, n: int) -> list[dict[str, Any]]:
    """The points scored on the validation documents, the one that gains most there chosen: the best
    point of each of the ``n`` best pairs of the screens and sweeps (``_best_per_pair``), then the best
    descent point (stage ``descend``) of each pair a descent walked. A descent's point competes there
    whatever its calibration rank: near a calibration loss of 0 the rank is noise (on F77 a sweep point
    at 0.0007 gained 0.23 on the validation documents where the descent's, at 0.006, had gained 0.76),
    and a descent's rejection there does not take the sweep's choice with it."""
    pool = _best_per_pair([point for point in curve if point["stage"] != "descend"], base_loss, n)
    descended = [point for point in curve if point["stage"] == "descend"]
    return pool + _best_per_pair(descended, base_loss, DESCEND_PAIRS)


def _grown(curve: list[dict[str, Any]], grown: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Grow's end point (``_grow``'s record), as one more point the validation documents may choose, where
    grow added channels; none where it did not run or added nothing."""
    if not grown or grown["channels"] == grown["from"]:
        return []
    pair, channels = (grown["layer"], grown["site"]), sorted(grown["channels"])
    return [
        point
        for point in curve
        if point["stage"] == "grow"
        and (point["layer"], point["site"]) == pair
        and point["channels"] == channels
        and point["scale"] == grown["scale"]
    ][:1]


def _other_counts(
    curve: list[dict[str, Any]], best: dict[str, Any], base_loss: float, n: int
) -> list[dict[str, Any]]:
    """The lowest-loss point of ``best``'s (layer, site) at each other channel count that beat
    ``base_loss``, best first, at most ``n``: the calibration documents choose the count by a margin
    that is often noise (a subset of the damped channels can fit them better than all of them)."""
    by_count: dict[int, dict[str, Any]] = {}
    for point in sorted(curve, key=lambda point: point["loss"]):
        same_pair = (point["layer"], point["site"]) == (best["layer"], best["site"])
        if same_pair and point["loss"] < base_loss and point["k"] != best["k"]:
            by_count.setdefault(point["k"], point)
    return list(by_count.values())[:n]


def _probe_counts(width: int) -> list[int]:
    """Channel counts probed per pair: PROBE_K below half the site's width, else a few and half of it."""
    counts = [k for k in PROBE_K if k <= width // 2]
    return (
        counts
        if len(counts) == len(PROBE_K)
        else sorted({max(1, min(PROBE_K[0], width // 4)), max(1, width // 2)})
    )


def _probe(
    model,
    batches,
    arch: ArchInfo,
    rankings: dict[Pair, Ranking],
    sweep: _Sweep,
    bars: _Progress,
    candidates: int,
    max_channels: int,
) -> tuple[list[dict[str, Any]], list[tuple[Pair, tuple[str, ...]]]]:
    """Method ``probe``: every distinct pair's top channels (attribution order, ``_probe_counts``) at
    PROBE_SCALE; then a coordinate search (``_coordinate``) in the PROBE_CANDIDATES pairs whose probes
    lowered the calibration loss most and the PROBE_CANDIDATES best-scored by attribution (a pair whose
    top channels mix damaged and healthy ones probes badly until the search drops the healthy ones). The
    ``candidates`` pairs that end lowest are swept (amplify), the searched set first in their order."""
    pairs = _distinct_best(rankings, len(rankings))
    counts = {p: _probe_counts(arch.site_width(p[1])) for p in pairs}
    probed: list[dict[str, Any]] = []
    with bars.phase("probe", sum(len(ks) for ks in counts.values()), "config"):
        for pair in pairs:
            points = [sweep.run(pair, "amplify", k, PROBE_SCALE, "probe") for k in counts[pair]]
            best = min(points, key=lambda point: point["loss"])
            probed.append(
                {"layer": pair[0], "site": pair[1], "score": rankings[pair].score, "direction": "amplify"}
                | {"loss": best["loss"], "k": best["k"], "widest": points[-1]}
            )
    by_probe = [(row["layer"], row["site"]) for row in sorted(probed, key=lambda row: row["loss"])]
    shortlist = list(dict.fromkeys(by_probe[:PROBE_CANDIDATES] + pairs[:PROBE_CANDIDATES]))
    widest = {(row["layer"], row["site"]): row.pop("widest") for row in probed}
    searched = []
    with bars.phase("coordinate search", len(shortlist) * PROBE_ROUNDS, "round"):
        for pair in shortlist:
            searched.append(
                (pair, _coordinate(model, batches, arch, sweep, pair, widest[pair], max_channels, bars))
            )
    searched.sort(key=lambda item: item[1]["loss"])
    plan = []
    for pair, point in searched[:candidates]:
        ranking = rankings[pair]
        ranking.amplify = point["order"] + [c for c in ranking.amplify if c not in point["order"]]
        ranking.helpful = {**(ranking.helpful or {}), "amplify": len(point["channels"])}
        plan.append((pair, ("amplify",)))
    return probed, plan


def _descend(
    model, batches, arch: ArchInfo, pair: Pair, steps: int, start, max_channels: int, advance
) -> tuple[list[int], list[float]]:
    """``steps`` Adam steps (DESCEND_LR) on the per-channel log-scales of ``pair`` from scale 1, on the
    mean answer loss plus DESCEND_L1 times the sum of |log-scale|; returns the channels the descent
    amplified past DESCEND_KEEP, most amplified first (at most ``max_channels``), and their scales."""
    logs = torch.zeros(arch.site_width(pair[1]), requires_grad=True)
    optimizer = torch.optim.Adam([logs], lr=DESCEND_LR)
    for _ in range(steps):
        factor = logs.detach().exp()
        grad = methods.gradient_at(model, batches, pair, factor, start)
        optimizer.zero_grad()
        logs.grad = grad * factor + DESCEND_L1 * torch.sign(logs.detach())  # d/d log s = s d/ds
        optimizer.step()
        with torch.no_grad():
            logs.clamp_(-3.0, 4.5)  # scales within x0.05 .. x90
        advance(f"descend layer {pair[0]} {pair[1]}")
    final = logs.detach()
    order = torch.argsort(final, descending=True).tolist()
    kept = [c for c in order if float(final[c]) > math.log(DESCEND_KEEP)][:max_channels]
    return kept, [round(float(final[c].exp()), 4) for c in kept]


def _sizes(
    model,
    batches,
    arch: ArchInfo,
    pairs: list[Pair],
    bars: _Progress,
    balanced: frozenset[Pair] = frozenset(),
) -> dict[Pair, torch.Tensor]:
    """Each pair's channel sizes (``finder.magnitude``), from one forward pass per batch; the ``balanced``
    pairs (``balanced_pairs``: a Mamba-2 model's ``ssm_out``, y, and ``gate``, read as the gated product
    y·SiLU(z)) set against what reads them."""
    gated = sorted({p[0] for p in balanced})
    with bars.phase("channel size", len(batches), "batch"):
        rms = magnitude.channel_rms(model, batches, pairs, arch.site_width, bars.advance, tuple(gated))
    sizes = magnitude.channel_size(model, rms)
    reading = magnitude.reading_norms(model, gated)
    for pair in balanced:
        sizes[pair] = magnitude.balanced_size(rms[pair], reading[pair[0]])
    return sizes


def balanced_pairs(arch: ArchInfo, pairs: list[Pair]) -> list[Pair]:
    """The pairs ``find --balance`` reads against what reads them: ssm_out and gate where steering reaches
    them at Mamba-2's gated norm (not Falcon-H1's inline gate; not Mamba-1)."""
    if site_row("ssm_out", arch.family, arch.architecture).reach != GATED_NORM_INPUT:
        return []
    return [p for p in pairs if p[1] in magnitude.GATED_SITES]


def check_balance(balance: object, method: str, field: str = "balance") -> bool:
    """``balance`` when it is allowed (a bool; True only with method outlier, whose channel sizes it
    changes); a FinderError naming ``field``, the value and what is allowed."""
    if not isinstance(balance, bool):
        raise FinderError(f"{field}: {balance!r}; allowed: true or false")
    if balance and method != "outlier":
        raise FinderError(f"{field}: on with method {method!r}; allowed with method outlier only")
    return balance


def _steep_channels(grad: torch.Tensor, size: torch.Tensor, how: str) -> list[int]:
    """A steep pair's channels in the order ``how`` (``STEEP_ORDERS``) puts them, first to screen first."""
    if how == "size":
        return size.argsort().tolist()
    if how == "ratio":
        return (grad / size.clamp(min=1e-30)).argsort().tolist()
    return grad.argsort().tolist()


def _outlier_screen(
    model,
    batches,
    arch: ArchInfo,
    outliers: dict[Pair, magnitude.Outliers],
    sweep: _Sweep,
    bars: _Progress,
    max_channels: int,
    balanced: frozenset[Pair] = frozenset(),
) -> list[dict[str, Any]]:
    """Method ``outlier``: the OUTLIER_PAIRS pairs whose smallest channel lies furthest below the rest
    (``outlier_pairs``), each with its outliers (at most ``max_channels``, smallest first) at PROBE_SCALE
    and at the scale that restores them to the median channel (clipped to RESTORE_LIMIT); then the
    OUTLIER_REFINE most extreme get the coordinate search (``_coordinate``) from their better point, at its
    scale. ``balanced`` (find --balance): the BALANCE_PAIRS most extreme of these pairs not chosen so are
    screened and refined too (their sizes are set against what reads them, so their z-scores do not
    compete with the other pairs' on one scale). One screened row per pair, as the attribution screen
    writes them, with the refined channel order (``channels``) where the search lowered the loss."""
    chosen = outlier_pairs(outliers, OUTLIER_PAIRS)
    extra = outlier_pairs(outliers, BALANCE_PAIRS, chosen, balanced) if balanced else []
    chosen += extra
    rows: list[dict[str, Any]] = []
    if not chosen:
        return rows
    scales = {  # x8, and the restoring scale where it differs
        pair: list(dict.fromkeys((PROBE_SCALE, _clipped_restore(outliers[pair].restore)))) for pair in chosen
    }
    best_points = {}
    with bars.phase("outlier screen", sum(len(v) for v in scales.values()), "config"):
        for pair in chosen:
            channels = outliers[pair].channels[:max_channels]
            points = [
                sweep.run_channels(pair, "amplify", channels, scale, "outlier screen")
                for scale in scales[pair]
            ]
            best_points[pair] = min(points, key=lambda point: point["loss"])
    # a naturally tiny channel among the damped ones spoils the set: drop what the gradient sends back
    refine = chosen[:OUTLIER_REFINE] + extra
    with bars.phase("outlier refine", len(refine) * PROBE_ROUNDS, "round"):
        for pair in refine:
            best = best_points[pair]
            point = _coordinate(
                model, batches, arch, sweep, pair, best, max_channels, bars, scale=best["scale"]
            )
            if point["loss"] < best["loss"]:
                best_points[pair] = {**best, "loss": point["loss"], "k": len(point["channels"])}
                best_points[pair]["order"] = point["order"]
    for pair in chosen:
        best = best_points[pair]
        rows.append(
            {"layer": pair[0], "site": pair[1], "score": outliers[pair].score, "direction": "amplify"}
            | {"loss": best["loss"], "k": best["k"], "scale": best["scale"], "source": "outliers"}
            | ({"channels": best["order"]} if "order" in best else {})
        )
    return rows


def outlier_pairs(
    outliers: dict[Pair, magnitude.Outliers],
    n: int,
    skip: list[Pair] = (),
    among: frozenset[Pair] | None = None,
) -> list[Pair]:
    """The ``n`` pairs (of ``among``; None: of all) whose smallest channel lies furthest below the rest,
    most extreme first; twins (same layer, same outliers) once, and none that is, or is a twin of, a pair
    of ``skip``."""
    chosen: list[Pair] = []
    for pair in sorted(outliers, key=lambda p: outliers[p].score, reverse=True):
        found = outliers[pair]
        if len(chosen) == n or not found.channels:
            break
        before = [*skip, *chosen]
        twin = any(q[0] == pair[0] and (q == pair or outliers[q].channels == found.channels) for q in before)
        if not twin and (among is None or pair in among):
            chosen.append(pair)
    return chosen


def default_narrow(method: str) -> int:
    """The narrow screen's width when none is asked for: NARROW_WIDTH for method outlier (whose channel
    sizes it reads), 0 (off) for the others."""
    return NARROW_WIDTH if method == "outlier" else 0


def check_narrow_floor(floor: object, field: str = "narrow_floor") -> float:
    """``floor`` when it is a finite number >= 0 (0: every count is tried, whatever its restoring scale);
    a FinderError naming ``field``, the value and what is allowed."""
    ok = isinstance(floor, (int, float)) and not isinstance(floor, bool) and math.isfinite(floor)
    if not ok or floor < 0:
        raise FinderError(f"{field}: {floor!r}; allowed: a number >= 0 (the smallest restoring scale tried)")
    return float(floor)


def check_narrow(narrow: object, method: str, field: str = "narrow") -> int:
    """``narrow`` when it is allowed (a whole number of channels, 0 for off; any other only with method
    outlier, whose channel sizes it reads); a FinderError naming ``field``, the value and what is allowed."""
    if isinstance(narrow, bool) or not isinstance(narrow, int) or narrow < 0:
        raise FinderError(f"{field}: {narrow!r}; allowed: a whole number of channels, 0 (off) or more")
    if narrow and method != "outlier":
        raise FinderError(f"{field}: {narrow} with method {method!r}; allowed with method outlier only")
    return narrow


def narrow_counts(log_size: torch.Tensor) -> list[int]:
    """How many of a pair's smallest channels the narrow screen restores: each NARROW_COUNTS up to a
    quarter of the site (at least 1), and the count just below the widest gap between consecutive sizes
    there (where a damped set ends, when it ends in a step)."""
    ordered = log_size.sort().values
    limit = max(1, ordered.numel() // 4)
    counts = {k for k in NARROW_COUNTS if k <= limit}
    if ordered.numel() > limit:
        counts.add(int((ordered[1 : limit + 1] - ordered[:limit]).argmax()) + 1)
    return sorted(counts)


def narrow_plan(size: torch.Tensor) -> list[tuple[list[int], float]]:
    """A narrow pair's plan from its channel sizes (``finder.magnitude``): for each count the narrow screen
    tries (``narrow_counts``), that many of its smallest channels and the scale that restores them, by
    geometric mean, to the median channel, unclipped."""
    log_size = magnitude.log_size(size)
    order = log_size.argsort().tolist()
    return [(order[:k], magnitude.restoring_scale(log_size, order[:k])) for k in narrow_counts(log_size)]


def _clipped_restore(restore: float) -> float:
    """A restoring scale as the screens try it: within RESTORE_LIMIT, to one decimal."""
    return round(min(max(restore, RESTORE_LIMIT[0]), RESTORE_LIMIT[1]), 1)


def _narrow_screen(
    arch: ArchInfo,
    rankings: dict[Pair, Ranking],
    sizes: dict[Pair, torch.Tensor],
    sweep: _Sweep,
    bars: _Progress,
    width: int,
    floor: float = NARROW_FLOOR,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The narrow screen: every pair of a site at most ``width`` channels wide has its smallest k channels
    (``narrow_plan``) amplified by the scale that restores them, by geometric mean, to the pair's median
    channel (clipped to RESTORE_LIMIT), for each k where that scale is at least ``floor``. In a narrow
    site a damped set can be the smallest channels yet not low outliers: a few channels give the median
    absolute deviation little to stand on, and a site's natural spread is wide (issue 22's survey: the
    damped heads of Mamba-2's Δ, Mamba-1's B and C). Pairs are told apart by their sizes, not their
    attribution: Mamba-1's B and C steer alike (y sums C_n h_n, h_n linear in B_n), but a damage shows in
    the sizes of the one it sits in; a pair whose plan equals one of its layer's before it is skipped, and
    so is a pair with no count left. One screened row per pair (source ``narrow``, its best point's
    channels smallest first) and the raw record: the width, the floor, the pairs at most that wide, and
    each screened pair's best point."""
    plans: dict[Pair, list[tuple[list[int], float]]] = {}
    narrow_pairs = sorted(p for p in rankings if arch.site_width(p[1]) <= width)
    for pair in narrow_pairs:
        restores = narrow_plan(sizes[pair])
        plan = [(channels, _clipped_restore(restore)) for channels, restore in restores if restore >= floor]
        if plan and not any(q[0] == pair[0] and plans[q] == plan for q in plans):
            plans[pair] = plan
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {"width": width, "floor": floor, "pairs": len(narrow_pairs), "best": {}}
    with bars.phase("narrow screen", sum(len(v) for v in plans.values()), "config"):
        for pair, plan in plans.items():
            points = [
                (channels, sweep.run_channels(pair, "amplify", channels, scale, "narrow screen"))
                for channels, scale in plan
            ]
            channels, best = min(points, key=lambda item: item[1]["loss"])
            raw["best"][f"{pair[0]}/{pair[1]}"] = {
                "k": best["k"],
                "scale": best["scale"],
                "loss": best["loss"],
            }
            rows.append(
                {"layer": pair[0], "site": pair[1], "score": rankings[pair].score, "direction": "amplify"}
                | {"loss": best["loss"], "k": best["k"], "scale": best["scale"], "source": "narrow"}
                | {"channels": channels}
            )
    return rows, raw


def _blocks(width: int, n: int) -> list[list[int]]:
    """A site's channels in a seeded random order (BLOCK_SEED), cut into ``n`` blocks (fewer if the site
    is narrower) of equal size but the last; each block sorted."""
    order = torch.randperm(width, generator=torch.Generator().manual_seed(BLOCK_SEED)).tolist()
    size = math.ceil(width / min(n, width))
    return [sorted(order[i : i + size]) for i in range(0, width, size)]


def _block_screen(
    model,
    batches,
    arch: ArchInfo,
    rankings: dict[Pair, Ranking],
    sweep: _Sweep,
    bars: _Progress,
    n: int,
    base_loss: float,
    max_channels: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Option ``blocks``: every distinct pair (``_distinct_best``) has its channels cut into ``n`` blocks
    (``_blocks``), each amplified at PROBE_SCALE, far from scale 1, where a saturated damage shows though
    the gradient there is flat. The BLOCK_REFINE pairs whose best block lowered the loss most then grow a
    union of their blocks that lowered it (best first, a block kept if it lowers the union's loss) and get
    the coordinate search (``_coordinate``) from that union, which drops the channels whose gradient at
    x8 asks to go back down. One screened row per refined pair (source ``blocks``), and the raw record:
    each pair's best block loss, and each refined pair's union and final channels."""
    pairs = _distinct_best(rankings, len(rankings))
    cut = {pair: _blocks(arch.site_width(pair[1]), n) for pair in pairs}
    with bars.phase("block screen", sum(len(b) for b in cut.values()), "config"):
        points = {
            pair: [sweep.run_channels(pair, "amplify", b, PROBE_SCALE, "block screen") for b in cut[pair]]
            for pair in pairs
        }
    best = {pair: min(point["loss"] for point in points[pair]) for pair in pairs}
    ranked = sorted(pairs, key=best.__getitem__)
    raw: dict[str, Any] = {"n": n, "best_loss": {f"{p[0]}/{p[1]}": best[p] for p in ranked}, "refined": {}}
    rows: list[dict[str, Any]] = []
    refine = ranked[:BLOCK_REFINE]
    with bars.phase("block refine", len(refine) * PROBE_ROUNDS, "round"):
        for pair in refine:
            gaining = sorted((p for p in points[pair] if p["loss"] < base_loss), key=lambda p: p["loss"])
            if not gaining:
                for _ in range(PROBE_ROUNDS):
                    bars.advance(f"layer {pair[0]} {pair[1]}: no block gains")
                continue
            union = gaining[0]
            with sweep.quiet():  # the bar counts the coordinate search's rounds
                for block in gaining[1:]:
                    channels = union["channels"] + block["channels"]
                    trial = sweep.run_channels(pair, "amplify", channels, PROBE_SCALE, "block union")
                    if trial["loss"] < union["loss"]:
                        union = trial
            cap = max(max_channels, len(union["channels"]))
            point = _coordinate(model, batches, arch, sweep, pair, union, cap, bars, scale=PROBE_SCALE)
            if point["loss"] >= union["loss"]:
                point = {"channels": union["channels"], "loss": union["loss"], "order": union["channels"]}
            raw["refined"][f"{pair[0]}/{pair[1]}"] = {"union": union["channels"], "channels": point["order"]}
            rows.append(
                {"layer": pair[0], "site": pair[1], "score": rankings[pair].score, "direction": "amplify"}
                | {"loss": point["loss"], "k": len(point["order"]), "scale": PROBE_SCALE, "source": "blocks"}
                | {"channels": point["order"]}
            )
    return rows, raw


def _distinct_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Screened rows, the first of each (layer, site) only."""
    seen: set[Pair] = set()
    out = []
    for row in rows:
        if (row["layer"], row["site"]) not in seen:
            seen.add((row["layer"], row["site"]))
            out.append(row)
    return out


def _coordinate(
    model,
    batches,
    arch: ArchInfo,
    sweep: _Sweep,
    pair: Pair,
    start: dict[str, Any],
    max_channels: int,
    bars,
    scale: float = PROBE_SCALE,
) -> dict[str, Any]:
    """From an evaluated point (channels x ``scale``), up to PROBE_ROUNDS rounds: one gradient AT the
    current point, then two moves, each evaluated for real: drop the set's channels whose gradient asks
    to go back down, and that plus the outside channels the gradient asks up most (at most half the set
    again). The better move is kept if it lowers the loss; else the search stops (the progress bar still
    counts PROBE_ROUNDS rounds). Returns the best point and a channel order (its set, most wanted first)."""
    width = arch.site_width(pair[1])
    current = {"channels": list(start["channels"]), "loss": start["loss"]}
    order = list(start["channels"])
    for done in range(PROBE_ROUNDS):
        factor = torch.ones(width)
        factor[current["channels"]] = scale
        grad = methods.gradient_at(model, batches, pair, factor, sweep.start(pair[0]))
        wanted = grad.argsort().tolist()  # most negative first: the loss falls if these grow
        inside = set(current["channels"])
        order = [c for c in wanted if c in inside]
        keep = [c for c in order if grad[c] <= 0]
        room = max(1, len(inside) // 2)
        add = [c for c in wanted if c not in inside and grad[c] < 0][:room]
        moves = [m for m in (keep, (keep + add)[:max_channels]) if m and sorted(m) != sorted(inside)]
        bars.advance(f"layer {pair[0]} {pair[1]}")
        with sweep.quiet():  # the bar counts rounds here, not configurations
            points = [(m, sweep.run_channels(pair, "amplify", m, scale, "coordinate")) for m in moves]
        better = [(m, point) for m, point in points if point["loss"] < current["loss"]]
        if not better:
            for _ in range(PROBE_ROUNDS - done - 1):
                bars.advance(f"layer {pair[0]} {pair[1]}: stopped")
            break
        move, point = min(better, key=lambda item: item[1]["loss"])
        current = {"channels": move, "loss": point["loss"]}
        order = move
    return {**current, "order": order}


def default_grow(method: str) -> int:
    """Grow's rounds when none are asked for: GROW_ROUNDS for method outlier (the one it was surveyed
    with), 0 (off) for the others."""
    return GROW_ROUNDS if method == "outlier" else 0


def check_grow(grow: object, field: str = "grow") -> int:
    """``grow``'s rule: a whole number of rounds, 0 (off) or more."""
    if isinstance(grow, bool) or not isinstance(grow, int) or grow < 0:
        raise FinderError(f"{field}: {grow!r}; allowed: a whole number of rounds, 0 (off) or more")
    return grow


def _grow(
    model,
    batches,
    arch: ArchInfo,
    sweep: _Sweep,
    rounds: int,
    max_channels: int,
    bars: _Progress,
    sizes: dict[Pair, torch.Tensor],
) -> dict[str, Any] | None:
    """Up to ``rounds`` rounds from the sweep's best amplifying point (its channels at its scale): one
    gradient at the current point, then the GROW_COUNTS outside channels that ask up most added at the same
    scale, each evaluated; the best addition is kept if it lowers the loss, else the rounds stop. Outside
    channels are ranked by their gradient over their size (most negative first; only those whose gradient is
    below zero): a damped channel's gradient shrinks with its activation, the ratio does not. Where a damage
    is spread over many channels but the sweep found the one or two that carry most of it, the gradient at
    the repaired point names the others (docs/finder.md, 'Grow'). ``sizes``: channel sizes already measured
    (method outlier's); the pair's are measured here if missing. Every point evaluated joins the sweep's
    curve (stage ``grow``). Returns what it did, for the raw scores (None: no amplifying point)."""
    amplifying = [point for point in sweep.curve if point["scale"] > 1]
    if not amplifying:
        return None
    start = min(amplifying, key=lambda point: point["loss"])
    pair, scale = (start["layer"], start["site"]), start["scale"]
    width = arch.site_width(pair[1])
    size = sizes[pair] if pair in sizes else _sizes(model, batches, arch, [pair], bars)[pair]
    current = {"channels": list(start["channels"]), "loss": start["loss"]}
    taken = 0  # rounds with a gradient
    with bars.phase("grow", rounds, "round"):
        while taken < rounds and len(current["channels"]) < min(width, max_channels):
            taken += 1
            factor = torch.ones(width)
            factor[current["channels"]] = scale
            grad = methods.gradient_at(model, batches, pair, factor, sweep.start(pair[0]))
            inside = set(current["channels"])
            ratio = grad / size.float().clamp(min=1e-30)
            wanted = [c for c in ratio.argsort().tolist() if c not in inside and grad[c] < 0]
            room = max_channels - len(inside)
            counts = [k for k in GROW_COUNTS if k <= min(room, len(wanted))]
            with sweep.quiet():  # the bar counts rounds here, not configurations
                points = [
                    sweep.run_channels(pair, "amplify", current["channels"] + wanted[:k], scale, "grow")
                    for k in counts
                ]
            bars.advance(f"layer {pair[0]} {pair[1]}")
            better = [point for point in points if point["loss"] < current["loss"]]
            if not better:
                break
            point = min(better, key=lambda point: point["loss"])
            current = {"channels": point["channels"], "loss": point["loss"]}
        for _ in range(rounds - taken):
            bars.advance(f"layer {pair[0]} {pair[1]}: stopped")
    return {
        "layer": pair[0],
        "site": pair[1],
        "scale": scale,
        "from": list(start["channels"]),
        "channels": current["channels"],
        "loss": {"start": start["loss"], "end": current["loss"]},
        "rounds": taken,
    }


def _distinct_best(rankings: dict[Pair, Ranking], n: int) -> list[Pair]:
    """The ``n`` best-scored pairs, skipping a pair that ranks exactly like a better one of its layer
    (Mamba-1's ssm_out and gate: scaling y or SiLU(z) of the product y ⊙ SiLU(z) is the same)."""
    chosen: list[Pair] = []
    for pair in sorted(rankings, key=lambda p: rankings[p].score, reverse=True):
        twin = any(
            q[0] == pair[0]
            and rankings[q].amplify == rankings[pair].amplify
            and math.isclose(rankings[q].score, rankings[pair].score, rel_tol=1e-4)
            for q in chosen
        )
        if not twin:
            chosen.append(pair)
        if len(chosen) == n:
            break
    return chosen


def _steepest(grads: dict[Pair, torch.Tensor], n: int, skip: list[Pair]) -> list[Pair]:
    """The ``n`` pairs whose most negative channel gradient (the loss falls fastest when that channel
    grows) is steepest, leaving out ``skip``, pairs with no negative gradient, and a pair whose gradients
    equal a chosen or skipped one's of its layer (Mamba-1's ssm_out and gate)."""
    chosen: list[Pair] = []
    for pair in sorted(grads, key=lambda p: float(grads[p].min())):
        if len(chosen) == n or float(grads[pair].min()) >= 0:
            break
        twin = any(
            q[0] == pair[0]
            and grads[q].shape == grads[pair].shape
            and torch.allclose(grads[q], grads[pair], rtol=1e-4, atol=1e-12)
            for q in chosen + skip
        )
        if pair not in skip and not twin:
            chosen.append(pair)
    return chosen


def _score(
    model, batches, arch, method, sites, bars: _Progress
) -> tuple[dict[Pair, Ranking], dict[str, Any]]:
    pairs = [(layer, site) for layer in arch.steerable_layers for site in sites]
    raw: dict[str, Any] = {}
    if method in ("attribution", "causal", "probe", "outlier"):
        with bars.phase("attribution", len(batches), "batch"):
            grads = methods.attribution(model, batches, pairs, arch, bars.advance)
        raw["grad"] = {f"{p[0]}/{p[1]}": g.grad.tolist() for p, g in grads.items()}
        raw["fisher"] = {f"{p[0]}/{p[1]}": g.fisher.tolist() for p, g in grads.items()}
        per_doc = next(iter(grads.values())).per_doc  # one set of sign flips for every pair
        flips = methods.sign_flips(per_doc.shape[0], per_doc.device)
        return {p: methods.rank_attribution(g, flips) for p, g in grads.items()}, raw
    if method == "dt-bias":
        stats = methods.dt_bias_layers(model, arch)
        raw["dt_bias"] = stats
        pairs = [(methods.dt_bias_layer(stats), "mixer_out")]
    with bars.phase("activation variance", len(batches), "batch"):
        variances = methods.activation_variance(model, batches, pairs, bars.advance)
    raw["variance"] = {f"{p[0]}/{p[1]}": v.tolist() for p, v in variances.items()}
    return {p: methods.rank_variance(v) for p, v in variances.items()}, raw


def _channel_counts(ranking: Ranking, direction: str, limit: int) -> set[int]:
    """K_GRID up to ``limit``, plus the count where the expected benefit drops sharply (if it does) and
    the number of verified channels that helped on their own (causal)."""
    ks = {k for k in K_GRID if k <= limit}
    if ranking.benefit:
        gap = _gap_k(ranking.benefit[direction], getattr(ranking, direction), limit)
        if gap:
            ks.add(gap)
    helpful = (ranking.helpful or {}).get(direction, 0)
    if 1 <= helpful <= limit:
        ks.add(helpful)
    return ks


def _screen_counts(arch: ArchInfo, pair: Pair) -> list[int]:
    return [k for k in SCREEN_K if k <= arch.site_width(pair[1])]


class _Starts:
    """``starts(layer)``: the cached input of ``layer`` on ``batches``, computed once, to evaluate from
    there; None for a hybrid, whose layers need the masks and position embeddings only a whole forward
    builds. The scan outputs an evaluation records for replay (``LayerInputs.scans``, the size of the
    scan's input, twice a layer input's at Mamba's expansion) are kept for the layer asked for last only:
    the search evaluates one pair's configurations together, so memory stays one layer's records."""

    def __init__(self, model, batches, arch: ArchInfo) -> None:
        self.model, self.batches, self.arch = model, batches, arch
        self._cached: dict[int, methods.LayerInputs] = {}

    def __call__(self, layer: int) -> methods.LayerInputs | None:
        if self.arch.mamba_layers is not None:
            return None
        if layer not in self._cached:
            # from the nearest cached layer before it, if any: the blocks between run once, not again
            below = max((k for k in self._cached if k < layer), default=None)
            self._cached[layer] = methods.LayerInputs(
                self.model, self.batches, layer, None if below is None else self._cached[below]
            )
        for other, inputs in self._cached.items():
            if other != layer:
                inputs.scans.clear()
        return self._cached[layer]


class _Sweep:
    """Evaluations of single interventions on the calibration data, each configuration once; ``curve``
    keeps every point in the order evaluated. ``advance`` follows every configuration asked for, also
    one evaluated before (it takes no time then)."""

    def __init__(
        self,
        model,
        batches,
        arch: ArchInfo,
        rankings: dict[Pair, Ranking],
        advance,
        wide: tuple[float, ...] = (),
    ) -> None:
        self.model, self.batches, self.arch, self.rankings = model, batches, arch, rankings
        # the sweep's other scales: amplifying ones past x8 too, where max_scale asks for them
        self.other = {**OTHER_SCALES, "amplify": OTHER_SCALES["amplify"] + wide}
        self.advance = advance
        self.curve: list[dict[str, Any]] = []
        self._seen: dict[tuple, dict[str, Any]] = {}
        self.start = _Starts(model, batches, arch)

    @contextmanager
    def quiet(self):
        """Evaluations inside the block do not advance the progress bar."""
        advance, self.advance = self.advance, lambda *args: None
        try:
            yield
        finally:
            self.advance = advance

    def run(self, pair: Pair, direction: str, k: int, scale: float, stage: str = "sweep") -> dict[str, Any]:
        """The top ``k`` channels of ``pair`` in ``direction``'s ranking at ``scale``."""
        channels = getattr(self.rankings[pair], direction)[:k]
        return self.run_channels(pair, direction, channels, scale, stage)

    def run_channels(
        self, pair: Pair, direction: str, channels: list[int], scale: float, stage: str = "sweep"
    ) -> dict[str, Any]:
        channels = sorted(channels)
        key = (pair, tuple(channels), scale)
        if key not in self._seen:
            spec = SteeringSpec.single(layer=pair[0], site=pair[1], channels=channels, scale=scale)
            score = methods.evaluate(self.model, self.batches, spec, self.start(pair[0]))
            point = {
                "stage": stage,
                "layer": pair[0],
                "site": pair[1],
                "direction": direction,
                "k": len(channels),
                "scale": scale,
                "channels": channels,
                "loss": score.loss,
                "accuracy": score.accuracy,
            }
            self._seen[key] = point
            self.curve.append(point)
        self.advance(f"{stage} layer {pair[0]} {pair[1]} k={len(channels)} x{scale:g}")
        return {**self._seen[key], "direction": direction, "k": len(channels)}

    def sweep(self, plan: list[tuple[Pair, tuple[str, ...]]], max_channels: int, bars: _Progress) -> None:
        """Per pair and direction: every channel count at the reference scale, then the other scales at
        the best count; then the best point's count again at its own scale."""
        counts = {
            (pair, direction): sorted(
                _channel_counts(
                    self.rankings[pair], direction, min(self.arch.site_width(pair[1]), max_channels)
                )
            )
            for pair, directions in plan
            for direction in directions
        }
        swept: list[dict[str, Any]] = []
        with bars.phase(
            "sweep", sum(len(ks) + len(self.other[d]) for (_, d), ks in counts.items()), "config"
        ):
            for (pair, direction), ks in counts.items():
                at_reference = [self.run(pair, direction, k, REFERENCE_SCALE[direction]) for k in ks]
                swept += at_reference
                best_k = min(at_reference, key=lambda point: point["loss"])["k"]
                swept += [self.run(pair, direction, best_k, s) for s in self.other[direction]]
        # the best point's k was chosen at the reference scale: choose it again at the point's own scale
        best = min(swept, key=lambda point: point["loss"])
        if best["scale"] != REFERENCE_SCALE[best["direction"]]:
            pair = (best["layer"], best["site"])
            others = [k for k in counts[(pair, best["direction"])] if k != best["k"]]
            with bars.phase("re-choose k", len(others), "config"):
                for k in others:
                    self.run(pair, best["direction"], k, best["scale"])


def write_outputs(result: FindResult, out: Path, arch: ArchInfo, sites: list[str]) -> dict[str, Path]:
    """The spec, ``<stem>.scores.json`` and ``<stem>.heatmap.png`` beside it, each written atomically."""
    stem = out.with_suffix("") if out.suffix == ".json" else out
    paths = {"spec": out, "scores": Path(f"{stem}.scores.json"), "heatmap": Path(f"{stem}.heatmap.png")}
    atomic_write(paths["scores"], lambda tmp: tmp.write_text(json.dumps(result.scores, indent=1) + "\n"))
    try:
        _heatmap(result, arch, sites, paths["heatmap"])
    except ImportError:
        warnings.warn("matplotlib is not installed (extra 'plots'): no heatmap PNG written", stacklevel=2)
        del paths["heatmap"]
    result.spec.save(out)
    return paths


def _heatmap_title(result: FindResult) -> str:
    """The pair-score heatmap's title: the configuration written, or the best one and why it was not."""
    chosen = result.scores["chosen"]
    where = f"layer {chosen['layer']} {chosen['site']}"
    if result.rejected is None:
        return f"{result.scores['method']} pair score; chosen: {where}"
    return f"{result.scores['method']} pair score; best: {where}\n{result.rejected}: identity written"


def _heatmap(result: FindResult, arch: ArchInfo, sites: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = _heatmap_figure(result, arch, sites)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def _heatmap_figure(result: FindResult, arch: ArchInfo, sites: list[str]):
    """Layer x site grid of the pair scores (a matplotlib figure)."""
    import matplotlib.pyplot as plt

    shown = [s for s in sites if any((layer, s) in result.heatmap for layer in range(arch.n_layers))]
    grid = torch.full((arch.n_layers, len(shown)), float("nan"))
    for (layer, site), value in result.heatmap.items():
        if site in shown:
            grid[layer, shown.index(site)] = value
    fig, ax = plt.subplots(figsize=(1.2 * len(shown) + 2.5, 0.35 * arch.n_layers + 2))
    image = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(shown)), shown, rotation=45)
    ax.set_yticks(range(arch.n_layers), [str(i) for i in range(arch.n_layers)])
    ax.set_xlabel("site")
    ax.set_ylabel("layer")
    ax.set_title(_heatmap_title(result))
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig
