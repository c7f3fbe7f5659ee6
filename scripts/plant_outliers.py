"""Where a survey plant's pair ranks in `find`'s outlier screen, and how many planted channels it flags.

    python scripts/plant_outliers.py --model ref-mamba1 --plant F77 [--top 12] [--device cpu]

Plants the survey plant (``ssmsteer study survey --list`` names them), runs the channel-size pass that
method ``outlier`` makes on the survey's calibration documents (its tasks, 512 and 2048 tokens, 4
documents a task and length), and prints the pairs in the order the outlier screen takes them: each
pair's score (how far its most extreme channel lies below the rest), its low outliers and, at the planted
layer, how many of them are planted; then the planted channels' robust z-scores. With ``--orders`` it also
runs the attribution pass and says how many planted channels come first when the planted pair's low
outliers are ordered by size (what the screen sweeps), by raw gradient or by gradient over size.
"""

from __future__ import annotations

import argparse

from lm_eval_ssmsteer.finder import magnitude, search
from lm_eval_ssmsteer.loading import load_model, resolve_model_path
from lm_eval_ssmsteer.mamba.arch import describe_model
from lm_eval_ssmsteer.mamba.sites import SITES, same_site
from lm_eval_ssmsteer.studies import survey
from lm_eval_ssmsteer.studies.damping import plant as plant_damage


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ref-mamba1")
    p.add_argument("--plant", required=True, help="a survey plant id, e.g. F77")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--device", default="cpu")
    p.add_argument("--orders", action="store_true", help="also order the planted pair's outliers otherwise")
    a = p.parse_args()
    path = resolve_model_path(a.model)
    plants = {pl.id: pl for pl in survey._plant_list(path)}
    if a.plant not in plants:
        p.error(f"--plant {a.plant!r}: not a plant of {a.model}; allowed: {', '.join(sorted(plants))}")
    pl = plants[a.plant]
    docs = argparse.Namespace(
        tasks=list(survey.SURVEY_TASKS),
        docs_per_task=survey.DOCS_PER_TASK,
        lengths=[512, 2048],
        test_docs=2,
        device=a.device,
    )
    model, tokenizer = load_model(path, device=a.device)
    data, _ = survey._documents(tokenizer, docs)
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
        from lm_eval_ssmsteer.finder import methods
        from lm_eval_ssmsteer.mamba.fastscan import fast_scan_if_allowed

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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
