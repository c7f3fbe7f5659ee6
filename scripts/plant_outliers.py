"""Where a survey plant's pair ranks in `find`'s outlier screen, and how many planted channels it flags.

    python scripts/plant_outliers.py --model ref-mamba1 --plant F77 [--top 12] [--device cpu]

Plants the survey plant (``ssmsteer study survey --list`` names them), runs the channel-size pass that
method ``outlier`` makes on the survey's calibration documents (its tasks, 512 and 2048 tokens, 4
documents a task and length), and prints the pairs in the order the outlier screen takes them: each
pair's score (how far its most extreme channel lies below the rest), its low outliers and, at the planted
layer, how many of them are planted; then the planted channels' robust z-scores. With ``--orders`` it also
runs the attribution pass and says how many planted channels come first when the planted pair's low
outliers are ordered by size (what the screen sweeps), by raw gradient or by gradient over size. With
``--groups SIZE`` it asks whether group screening could find the planted channels: the planted pair's
channels, in a seeded random order, cut into blocks of SIZE, each block amplified at ``--group-scale``
(default: the inverse of the plant's damping, the scale that undoes it exactly) and its calibration loss
measured, beside the loss unplanted, planted, and with exactly the planted channels undone; a block's
gain is the planted loss minus its loss. With ``--lift`` it lifts every channel of the planted pair whose
robust z lies below -t (t from 3 down to 0) to the pair's median size, each by its own scale (clipped to
64), and prints the calibration loss with how many planted channels the lift covers; and, for reference,
exactly the planted channels lifted the same way. With ``--descend STEPS`` it runs find's descent
(``search._descend``: Adam on the planted pair's per-channel log-scales, L1-pulled toward 1) and prints
the channels it amplifies past x1.5 (planted or not) and the loss on the calibration, validation and
TEST documents (``--test-docs`` a task and length) with those channels at each of find's descent scales,
beside the loss unplanted, planted and with the planted channels undone. With ``--block-screen N`` it
runs find's block screen (``search._block_screen``, the ``--blocks N`` option) over every distinct pair
and prints where the planted pair ranks by its best block, and what the refinement kept. With ``--single N``
it amplifies each of the planted pair's N largest channels alone at x8 and prints how many lower the
calibration loss, how many of those are planted, and the loss with the best few of them together.
"""

from __future__ import annotations

import argparse
import math

import torch

from lm_eval_ssmsteer.finder import magnitude, methods, search
from lm_eval_ssmsteer.loading import load_model, resolve_model_path
from lm_eval_ssmsteer.mamba.arch import describe_model
from lm_eval_ssmsteer.mamba.fastscan import fast_scan_if_allowed
from lm_eval_ssmsteer.mamba.sites import SITES, same_site
from lm_eval_ssmsteer.spec import SteeringSpec
from lm_eval_ssmsteer.studies import survey
from lm_eval_ssmsteer.studies.damping import plant as plant_damage

PROBE = 8.0  # the single-channel probe's scale (--single)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ref-mamba1")
    p.add_argument("--plant", required=True, help="a survey plant id, e.g. F77")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--device", default="cpu")
    p.add_argument("--orders", action="store_true", help="also order the planted pair's outliers otherwise")
    p.add_argument(
        "--groups", type=int, default=0, help="screen the planted pair's channels in blocks of this size"
    )
    p.add_argument("--group-scale", type=float, default=None, help="the blocks' scale (default: 1 / damping)")
    p.add_argument(
        "--group-layers",
        action="store_true",
        help="with --groups: screen the planted site at every layer, and rank the layers by their best block",
    )
    p.add_argument("--lift", action="store_true", help="lift the planted pair's small channels to its median")
    p.add_argument(
        "--descend", type=int, default=0, metavar="STEPS", help="run find's descent on the planted pair"
    )
    p.add_argument(
        "--block-screen", type=int, default=0, metavar="N", help="run find's block screen, N blocks a pair"
    )
    p.add_argument(
        "--single",
        type=int,
        default=0,
        metavar="N",
        help="probe the planted pair's N largest channels alone at x8",
    )
    p.add_argument("--test-docs", type=int, default=2, help="TEST documents a task and length (default 2)")
    a = p.parse_args()
    if a.block_screen < 0:
        p.error(f"--block-screen {a.block_screen}: allowed: N >= 1 blocks a pair (0: off)")
    if a.descend < 0 or a.test_docs < 1:
        p.error(f"--descend {a.descend}, --test-docs {a.test_docs}: allowed: STEPS >= 0, documents >= 1")
    if a.single < 0:
        p.error(f"--single {a.single}: allowed: N >= 1 channels (0: off)")
    if a.groups < 0:
        p.error(f"--groups {a.groups}: a block holds at least 1 channel (0: no group screening)")
    if a.group_layers and not a.groups:
        p.error("--group-layers screens blocks: give --groups SIZE too")
    path = resolve_model_path(a.model)
    plants = {pl.id: pl for pl in survey._plant_list(path)}
    if a.plant not in plants:
        p.error(f"--plant {a.plant!r}: not a plant of {a.model}; allowed: {', '.join(sorted(plants))}")
    pl = plants[a.plant]
    docs = argparse.Namespace(
        tasks=list(survey.SURVEY_TASKS),
        docs_per_task=survey.DOCS_PER_TASK,
        lengths=[512, 2048],
        test_docs=a.test_docs,
        device=a.device,
    )
    model, tokenizer = load_model(path, device=a.device)
    data, _ = survey.find_documents(tokenizer, docs)
    planted = set(plant_damage(model, pl.layer, pl.site, pl.count, pl.scale, pl.seed))
    arch = describe_model(model)
    refused = {site for site, _ in arch.refused_sites}
    pairs = [(layer, site) for layer in arch.steerable_layers for site in SITES if site not in refused]
    batches = list(data["calibration"].batches())
    sizes = search._sizes(model, batches, arch, pairs, search._Progress(False))
    outliers = {pair: magnitude.low_outliers(v) for pair, v in sizes.items()}
    ranked = sorted(outliers, key=lambda pair: outliers[pair].score, reverse=True)
    print(f"{pl.id}: L{pl.layer} {pl.site} {pl.count} x{pl.scale:g}, planted channels {sorted(planted)}")
    print("| rank | pair | score | low outliers | planted among them |")
    print("|---|---|---|---|---|")
    for rank, pair in enumerate(ranked[: a.top]):
        found = outliers[pair]
        here = pair[0] == pl.layer and same_site(pair[1], pl.site, arch.family)
        hit = len(set(found.channels) & planted) if here else "–"
        mark = " (planted)" if here else ""
        print(f"| {rank} | L{pair[0]} {pair[1]}{mark} | {found.score:.2f} | {len(found.channels)} | {hit} |")
    found = outliers[(pl.layer, pl.site)]
    z = dict(zip(found.channels, found.z, strict=True))
    flagged = sorted(round(z[c], 1) for c in planted if c in z)
    print(f"planted channels flagged: {len(flagged)} of {len(planted)}, robust z {flagged}")
    if a.orders:
        pair = (pl.layer, pl.site)
        with fast_scan_if_allowed(model):  # as find runs it
            grad = methods.attribution(model, batches, [pair], arch)[pair].grad.double()
        low = found.channels
        orders = {
            "size (the screen's)": low,
            "raw gradient": sorted(low, key=lambda c: float(grad[c])),
            "gradient / size": sorted(low, key=lambda c: float(grad[c] / sizes[pair][c].clamp(min=1e-30))),
        }
        counts = [k for k in (4, 8, 16, 32) if k <= len(low)]
        print(
            f"| order of the {len(low)} low outliers | "
            + " | ".join(f"planted in first {k}" for k in counts)
            + " |"
        )
        print("|---|" + "---|" * len(counts))
        for name, order in orders.items():
            print(f"| {name} | " + " | ".join(str(len(set(order[:k]) & planted)) for k in counts) + " |")
    if a.groups:
        _groups(model, batches, arch, pl, sorted(planted), a, path)
    if a.lift:
        _lift(model, batches, pl, sorted(planted), sizes[(pl.layer, pl.site)])
    if a.descend:
        _descend(model, data, arch, pl, sorted(planted), a, path)
    if a.block_screen:
        _block_screen(model, batches, arch, pairs, pl, planted, a.block_screen)
    if a.single:
        _single(model, batches, pl, planted, sizes[(pl.layer, pl.site)], a.single)
    return 0


def _block_screen(model, batches, arch, pairs, pl, planted: set[int], n: int) -> None:
    """The block-screen table (``--block-screen N``): every distinct pair ranked by its best block's
    calibration loss, as find's option ranks them, the planted pair marked; then the refined rows."""
    with fast_scan_if_allowed(model):
        base = methods.evaluate(model, batches).loss
        grads = methods.attribution(model, batches, pairs, arch)
        flips = methods.sign_flips(next(iter(grads.values())).per_doc.shape[0], batches[0][0].device)
        rankings = {q: methods.rank_attribution(g, flips) for q, g in grads.items()}
        sweep = search._Sweep(model, batches, arch, rankings, lambda *args: None)
        rows, raw = search._block_screen(
            model, batches, arch, rankings, sweep, search._Progress(False), n, base, 32
        )
    ranked = list(raw["best_loss"])
    here = [
        k
        for k in ranked
        if int(k.split("/")[0]) == pl.layer and same_site(k.split("/")[1], pl.site, arch.family)
    ]
    where = f"{ranked.index(here[0]) + 1} of {len(ranked)}" if here else "not screened (a twin)"
    print(f"block screen, {n} blocks a pair: planted pair ranks {where}; loss planted {base:.4f}")
    print("| rank | pair | best block's loss |")
    print("|---|---|---|")
    for rank, key in enumerate(ranked[:6], start=1):
        mark = " (planted)" if key in here else ""
        print(f"| {rank} | L{key.replace('/', ' ')}{mark} | {raw['best_loss'][key]:.4f} |")
    for row in rows:
        key = f"{row['layer']}/{row['site']}"
        hit = len(set(row["channels"]) & planted) if key in here else "–"
        print(
            f"refined L{row['layer']} {row['site']}: {row['k']} channels x{row['scale']:g}, loss "
            f"{row['loss']:.4f}, planted among them {hit} of {len(planted)}"
        )


def _loss(model, batches, spec: SteeringSpec | None, start: methods.LayerInputs | None = None) -> float:
    """The calibration loss under ``spec`` (None: unsteered), computed as ``find`` computes it; ``start``:
    from that cached layer input (``spec`` steers there or later)."""
    with fast_scan_if_allowed(model):
        return methods.evaluate(model, batches, spec, start).loss


def _single(model, batches, pl, planted: set[int], size: torch.Tensor, n: int) -> None:
    """The single-channel probe (``--single N``): each of the planted pair's N largest channels alone at x8,
    from the layer's cached input; which ones lower the calibration loss, and whether the best of them,
    together, repair what the planted channels at x8 repair."""
    start = methods.LayerInputs(model, batches, pl.layer)

    def loss(channels: list[int] | set[int]) -> float:
        spec = SteeringSpec.single(pl.layer, pl.site, sorted(channels), PROBE) if channels else None
        return _loss(model, batches, spec, start)

    base = loss([])
    largest = torch.argsort(size, descending=True)[:n].tolist()
    gains = {c: base - loss([c]) for c in largest}
    order = sorted(gains, key=gains.__getitem__, reverse=True)
    gaining = [c for c in order if gains[c] > 0]
    print(
        f"calibration loss planted {base:.4f}, planted channels x{PROBE:g} {loss(planted):.4f}; "
        f"planted among the {n} largest channels: {len(set(largest) & planted)}"
    )
    hits = len(set(gaining) & planted)
    print(f"alone at x{PROBE:g}, {len(gaining)} of them lower the loss, {hits} planted")
    print("| the best k by their gain alone, together | planted among them | loss |")
    print("|---|---|---|")
    for k in (1, 2, 4, 8, 16):
        if k <= len(order):
            print(f"| {k} | {len(set(order[:k]) & planted)} | {loss(order[:k]):.4f} |")


def _lift(model, batches, pl, planted: list[int], size: torch.Tensor) -> None:
    """The lift table (``--lift``): channels below a robust-z threshold (``magnitude.low_outliers``) lifted
    to the pair's median size, each by its own scale."""
    log = size.double().clamp(min=1e-30).log()
    median = log.median()

    def lifted_loss(channels: list[int]) -> float:
        # one intervention per quarter-octave of scale: the spec stays short, each scale within 19% of its own
        buckets: dict[float, list[int]] = {}
        for c in channels:
            lift = min(math.exp(float(median - log[c])), 64.0)
            buckets.setdefault(round(math.log2(lift) * 4) / 4, []).append(c)
        items = [
            {"layer": pl.layer, "site": pl.site, "channels": sorted(cs), "scale": round(2.0**b, 4)}
            for b, cs in buckets.items()
        ]
        return _loss(
            model, batches, SteeringSpec.from_dict({"version": 1, "interventions": items}) if items else None
        )

    print(f"calibration loss planted {lifted_loss([]):.4f}; lifted to the median:")
    print("| channels lifted | how many | planted among them | loss |")
    print("|---|---|---|---|")
    for t in (3.0, 2.0, 1.5, 1.0, 0.5, 0.0):
        low = magnitude.low_outliers(size, threshold=t).channels
        print(f"| z < -{t:g} | {len(low)} | {len(set(low) & set(planted))} | {lifted_loss(low):.4f} |")
    print(f"| exactly the planted | {len(planted)} | {len(planted)} | {lifted_loss(planted):.4f} |")


def _descend(model, data, arch, pl, planted: list[int], a: argparse.Namespace, path) -> None:
    """The descent table (``--descend``): what find's descent keeps on the planted pair, and how the kept
    channels at each descent scale do on documents the descent never saw."""
    sets = {
        "calibration": list(data["calibration"].batches()),
        "validation": list(data["validation"].batches()),
        "test": data["test"],
    }
    pair = (pl.layer, pl.site)
    with fast_scan_if_allowed(model):
        kept, scales = search._descend(
            model, sets["calibration"], arch, pair, a.descend, None, 32, lambda *args: None
        )
    marks = ", ".join(
        f"{c} x{s:.2f}{' (planted)' if c in planted else ''}" for c, s in zip(kept, scales, strict=True)
    )
    print(
        f"descent, {a.descend} steps on L{pl.layer} {pl.site}: kept {len(kept)} channels: {marks or 'none'}"
    )
    clean, _ = load_model(path, device=a.device)
    rows = [("unplanted", clean, None), ("planted", model, None)]
    rows.append(
        (
            f"planted channels x{1 / pl.scale:g}",
            model,
            SteeringSpec.single(pl.layer, pl.site, planted, 1 / pl.scale),
        )
    )
    rows += [
        (f"kept channels x{s:g}", model, SteeringSpec.single(pl.layer, pl.site, kept, s))
        for s in search.DESCEND_SCALES
        if kept
    ]
    print("| steering | " + " | ".join(f"{name} loss" for name in sets) + " |")
    print("|---|" + "---|" * len(sets))
    for name, m, spec in rows:
        print(f"| {name} | " + " | ".join(f"{_loss(m, b, spec):.4f}" for b in sets.values()) + " |")


def _groups(model, batches, arch, pl, planted: list[int], a: argparse.Namespace, path) -> None:
    """The group-screening table (``--groups``): per block of the planted pair's channels, how many are
    planted and what amplifying the block gains on the calibration loss. With ``--group-layers`` the same
    blocks at the planted site of every layer, the layers ranked by their best block's gain: whether a
    block screen would point at the planted layer."""
    scale = a.group_scale if a.group_scale is not None else 1.0 / pl.scale
    width = arch.site_width(pl.site)
    order = torch.randperm(width, generator=torch.Generator().manual_seed(0)).tolist()
    blocks = [sorted(order[i : i + a.groups]) for i in range(0, width, a.groups)]

    clean, _ = load_model(path, device=a.device)
    planted_loss = _loss(model, batches, None)
    at_planted = SteeringSpec.single(pl.layer, pl.site, planted, scale)
    print(
        f"calibration loss: unplanted {_loss(clean, batches, None):.4f}, planted {planted_loss:.4f}, planted "
        f"channels x{scale:g} {_loss(model, batches, at_planted):.4f}"
    )

    def gains(layer: int) -> list[float]:
        return [
            planted_loss - _loss(model, batches, SteeringSpec.single(layer, pl.site, block, scale))
            for block in blocks
        ]

    here = gains(pl.layer)
    print(f"| block of {a.groups} | planted in it | loss x{scale:g} | gain |")
    print("|---|---|---|---|")
    for i, (block, gain) in enumerate(zip(blocks, here, strict=True)):
        print(f"| {i} | {len(set(block) & set(planted))} | {planted_loss - gain:.4f} | {gain:+.4f} |")
    if not a.group_layers:
        return
    by_layer = {layer: (here if layer == pl.layer else gains(layer)) for layer in arch.steerable_layers}
    ranked = sorted(by_layer, key=lambda layer: max(by_layer[layer]), reverse=True)
    print(f"| rank | layer ({pl.site}) | best block's gain | blocks that gain |")
    print("|---|---|---|---|")
    for rank, layer in enumerate(ranked):
        values = by_layer[layer]
        mark = " (planted)" if layer == pl.layer else ""
        gaining = sum(v > 0 for v in values)
        print(f"| {rank} | L{layer}{mark} | {max(values):+.4f} | {gaining} of {len(values)} |")


if __name__ == "__main__":
    raise SystemExit(main())
