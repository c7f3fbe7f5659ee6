"""Where each damaging plant of survey folders lies among its site's channel sizes (docs/finder.md, "Narrow
screen"): the sizes the outlier screen reads (``finder.magnitude``), on the plant's own calibration documents,
rebuilt from the folder's settings. One JSON line a plant: the planted pair's rank among all pairs by outlier
score, its low outliers, how many planted channels are among them and among the pair's smallest as many as
were planted, and the last planted channel's position in the pair's size order (smallest first). With
``--narrow W`` (default 64; 0: off) also the narrow screen's plan (docs/finder.md, "The narrow screen's
floor"): for the planted pair, if at most W wide, each count k it tries with the scale that restores the k
smallest channels to the median channel (unclipped) and how many of them are planted; the largest such
scale of any other pair at most W wide; and how many (pair, count) points the plans hold in all and at
each ``--floors`` scale (before the screen skips a pair whose plan equals one of its layer's).

    python scripts/survey_sizes.py docs/results/finder/survey-withheld-gpu/m2-needles [FOLDER ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="survey folders (settings.json and plants/)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-damage", type=float, default=0.1, help="plants costing at least this (0.1)")
    parser.add_argument("--narrow", type=int, default=64, help="the narrow screen's width (64; 0: no plan)")
    parser.add_argument(
        "--floors", type=float, nargs="+", default=[4.0], help="restoring scales to count plan points at (4)"
    )
    args = parser.parse_args(argv)

    from lm_eval_ssmsteer.finder import magnitude
    from lm_eval_ssmsteer.mamba.arch import describe_model, mamba_mixers
    from lm_eval_ssmsteer.mamba.fastscan import fast_scan_if_allowed
    from lm_eval_ssmsteer.mamba.sites import SITES
    from lm_eval_ssmsteer.studies.survey import plants_folder, rebuild_survey

    for folder in args.folders:
        records = [json.loads(f.read_text()) for f in sorted(plants_folder(folder).glob("*.json"))]
        records = [r for r in records if r["damage"]["mean"] >= args.min_damage]
        if not records:
            continue
        survey = rebuild_survey(folder, args.device)
        for record in records:
            started = time.time()
            model = survey.replant(record)
            arch = describe_model(model)
            pairs = [(layer, site) for layer in mamba_mixers(model) for site in SITES]
            with fast_scan_if_allowed(model):
                rms = magnitude.channel_rms(model, survey.calibration, pairs, arch.site_width)
            sizes = magnitude.channel_size(model, rms)
            outliers = {p: magnitude.low_outliers(v) for p, v in sizes.items()}
            plant = record["plant"]
            pair = (plant["layer"], plant["site"])
            planted = set(record["channels"])
            found = outliers[pair]
            ranking = sorted(outliers, key=lambda q: outliers[q].score, reverse=True)
            row = {
                "folder": folder.name,
                "id": plant["id"],
                "pair": f"L{pair[0]} {pair[1]}",
                "count": plant["count"],
                "scale": plant["scale"],
                "damage": round(record["damage"]["mean"], 3),
                "width": len(found.order),
                "pair_rank": ranking.index(pair) + 1,
                "pairs": len(ranking),
                "outliers": len(found.channels),
                "planted_in_outliers": len(planted & set(found.channels)),
                "planted_among_smallest": len(planted & set(found.order[: len(planted)])),
                "last_planted_position": max(found.order.index(c) for c in planted),
                "score": round(found.score, 2),
            }
            if args.narrow:
                row |= narrow_plans(sizes, pair, planted, args.narrow, args.floors)
            row["seconds"] = round(time.time() - started, 1)
            print(json.dumps(row), flush=True)
    return 0


def narrow_plans(sizes: dict, pair: tuple[int, str], planted: set[int], width: int, floors) -> dict:
    """The narrow screen's plan fields of one plant (the module docstring), from its pairs' channel sizes."""
    from lm_eval_ssmsteer.finder.search import narrow_plan

    plans = {q: narrow_plan(size) for q, size in sizes.items() if len(size) <= width}
    points = [restore for plan in plans.values() for _, restore in plan]
    others = [restore for q, plan in plans.items() if q != pair for _, restore in plan]
    return {
        "narrow_plan": [
            [len(channels), round(restore, 2), len(planted & set(channels))]
            for channels, restore in plans.get(pair, [])
        ],
        "narrow_other_max": round(max(others), 2) if others else None,
        "narrow_points": len(points),
        "narrow_points_at": {f"{f:g}": sum(r >= f for r in points) for f in floors},
    }


if __name__ == "__main__":
    sys.exit(main())
