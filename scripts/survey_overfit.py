"""Does a survey find's spec repair the plant, or only the find's own documents? (issue 22)

    python scripts/survey_overfit.py FOLDER PLANT [--find NAME] [--device cpu]

Rebuilds the survey folder's model and documents (``study survey``'s settings), plants ``PLANT`` again, and
scores the spec that find ``--find`` (default: the record's first find) wrote for it, beside the intact and
the damaged model and the planted channels at x8, on the find's calibration documents, its validation
documents and the TEST documents: the mean answer-token loss and how many documents have the whole answer
right (teacher-forced). A spec that beats the intact model on the calibration and validation documents and
changes nothing on TEST fixes their hard documents, not the plant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lm_eval_ssmsteer.spec import SteeringSpec
from lm_eval_ssmsteer.studies import survey
from lm_eval_ssmsteer.studies.plant import test_scores_per_document


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a survey folder (settings.json and plants/)")
    p.add_argument("plant", help="a plant id of that folder, e.g. R28")
    p.add_argument("--find", default=None, help="a find name of the record (default: its first)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    record_file = survey.plants_folder(a.folder) / f"{a.plant}.json"
    if not record_file.exists():
        p.error(f"plant {a.plant!r}: no {record_file}")
    record = json.loads(record_file.read_text())
    finds = record["finds"]
    name = a.find or next(iter(finds), None)
    if name not in finds:
        p.error(f"--find {name!r}: not a find of {record_file}; allowed: {', '.join(finds) or 'none'}")
    found, plant = finds[name]["found"], record["plant"]
    rebuilt = survey.rebuild_survey(a.folder, a.device)
    damaged = rebuilt.replant(record)
    specs = {
        "intact": (rebuilt.model, None),
        "damaged": (damaged, None),
        "planted x8": (damaged, SteeringSpec.single(plant["layer"], plant["site"], record["channels"], 8.0)),
        "found": (
            damaged,
            SteeringSpec.single(found["layer"], found["site"], found["channels"], found["scale"]),
        ),
    }
    print(
        f"{a.plant}: L{plant['layer']} {plant['site']} {plant['count']} x{plant['scale']:g}; {name} wrote ",
        end="",
    )
    print(f"L{found['layer']} {found['site']} {len(found['channels'])} x{found['scale']:g}")
    sets = {"calibration": rebuilt.calibration, "validation": rebuilt.validation, "TEST": rebuilt.test}
    print("| model | " + " | ".join(f"{s} loss | {s} right" for s in sets) + " |")
    print("|---|" + "---|---|" * len(sets))
    for label, (model, spec) in specs.items():
        cells = []
        for batches in sets.values():
            scored = test_scores_per_document(model, batches, spec)
            cells.append(f"{scored.summary().loss:.4f} | {int(scored.right.sum())} of {scored.right.numel()}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
