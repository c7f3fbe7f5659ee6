"""A find's written spec, its own channels, at larger scales (issue 22, docs/finder.md "Scales past ×8").

    python scripts/found_ladder.py FOLDER --find FIND --plants ID... [--scales 8 13 20 32 50] [--device cpu]

`--max-scale` puts the scale ladder past ×8 on the sweep's best channel count of a pair's ranking, so a
spec another stage wrote (the block screen's refined union, the outlier refinement) is never tried past ×8.
This script asks what that would give: for each named plant of a survey FOLDER (settings.json and plants/),
it loads the model, damages it again as recorded (the channels are checked against the record) and scores
the channel set FIND wrote at each of --scales, on the find's calibration and validation documents (rebuilt
from settings.json; the mean answer loss, what the search and the validation compare) and on the survey's
TEST documents (accuracy and the win-back, as the survey computes them). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lm_eval_ssmsteer.studies import StudyArgumentError
from lm_eval_ssmsteer.studies.survey import plants_folder, rebuild_survey


def read_plant(folder: Path, plant_id: str, find: str) -> dict:
    """The plant's record, which must hold a ``find`` that wrote a spec; else SystemExit saying why."""
    record_file = plants_folder(folder) / f"{plant_id}.json"
    if not record_file.exists():
        raise SystemExit(f"{folder}: no plant {plant_id!r} ({record_file})")
    record = json.loads(record_file.read_text())
    if find not in record["finds"]:
        raise SystemExit(
            f"{folder} {plant_id}: find {find!r} was not run; recorded: {', '.join(record['finds'])}"
        )
    if not record["finds"][find]["written"]:
        raise SystemExit(f"{folder} {plant_id}: {find} wrote the identity; nothing to scale")
    return record


def measure(folder: Path, find: str, plants: list[str], scales: list[float], device: str) -> list[dict]:
    from lm_eval_ssmsteer.finder.methods import per_document
    from lm_eval_ssmsteer.finder.paired import win_back
    from lm_eval_ssmsteer.mamba.fastscan import fast_scan_if_allowed
    from lm_eval_ssmsteer.spec import SteeringSpec
    from lm_eval_ssmsteer.studies.plant import test_scores_per_document

    records = {plant_id: read_plant(folder, plant_id, find) for plant_id in plants}  # before the model loads
    survey = rebuild_survey(folder, device)
    cal, val, test = survey.calibration, survey.validation, survey.test
    with fast_scan_if_allowed(survey.model):  # the CPU's fast scan, as find runs it
        intact = test_scores_per_document(survey.model, test)
    rows = []
    for plant_id, record in records.items():
        p, found = record["plant"], record["finds"][find]
        try:
            model = survey.replant(record)
        except StudyArgumentError as e:
            raise SystemExit(f"{folder} {e}") from None
        spec_of = found["found"]
        started = time.time()
        with fast_scan_if_allowed(model):
            damaged = test_scores_per_document(model, test)
            for scale in [None, *scales]:
                spec = (
                    None
                    if scale is None
                    else SteeringSpec.single(spec_of["layer"], spec_of["site"], spec_of["channels"], scale)
                )
                steered = test_scores_per_document(model, test, spec) if spec else damaged
                back = win_back(intact.right, damaged.right, steered.right).value if spec else 0.0
                rows.append(
                    {
                        "plant": plant_id,
                        "planted": f"L{p['layer']} {p['site']} {p['count']} x{p['scale']:g}",
                        "spec": f"L{spec_of['layer']} {spec_of['site']} {len(spec_of['channels'])}",
                        "recall": found["recall"],
                        "written scale": spec_of["scale"],
                        "scale": scale,
                        "calibration loss": per_document(model, cal, spec).summary().loss,
                        "validation loss": per_document(model, val, spec).summary().loss,
                        "test accuracy": float(steered.right.double().mean()),
                        "win-back": back,
                    }
                )
        print(f"{plant_id}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| plant | planted | written spec (recall) | scale | calibration loss | validation loss "
        "| TEST accuracy | win-back |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        scale = "damaged" if r["scale"] is None else f"x{r['scale']:g}"
        scale += " (written)" if r["scale"] == r["written scale"] else ""
        back = "–" if r["win-back"] is None else f"{r['win-back']:.2f}"
        lines.append(
            f"| {r['plant']} | {r['planted']} | {r['spec']} ({r['recall']:.0%}) | {scale} "
            f"| {r['calibration loss']:.4f} | {r['validation loss']:.4f} | {r['test accuracy']:.3f} "
            f"| {back} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a survey folder (settings.json and plants/)")
    ap.add_argument("--find", required=True, help="the find option whose written spec is scaled")
    ap.add_argument("--plants", nargs="+", required=True, help="plant ids, e.g. S46 S37")
    ap.add_argument("--scales", nargs="+", type=float, default=[8.0, 13.0, 20.0, 32.0, 50.0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON")
    a = ap.parse_args(argv)
    if any(s <= 0 for s in a.scales):
        ap.error(f"--scales {a.scales}: allowed: positive numbers")
    try:
        rows = measure(a.folder, a.find, a.plants, a.scales, a.device)
    except StudyArgumentError as e:  # no settings.json
        ap.error(str(e))
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
