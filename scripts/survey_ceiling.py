"""Where the finder loses a plant: in the search, or in what it optimizes (issue 22).

    python scripts/survey_ceiling.py FOLDER... [--find outlier] [--min-damage 0.10] [--out FILE.json]
    python scripts/survey_ceiling.py --table FILE.json [--table ...]   (again, from --out files)

FOLDER is a survey folder (`ssmsteer study survey --out`, with its settings.json and plants/). For each
plant whose damage is at least --min-damage and that --find ran on, the model is loaded fresh, damaged again
the same way (the channels are checked against the record), and four configurations are scored on the find's
own documents, rebuilt from settings.json: the CALIBRATION documents the search minimizes the loss on, and the
validation documents it decides with. The configurations: the damaged model, the spec --find wrote, the
planted channels ×8 (a spec the finder can write; the survey's reference repair) and the exact inverse.

A plant the find missed (its spec wins back < 0.8 of the TEST documents) is judged against a true repair
that wins back >= 0.8: the planted channels ×8, else the exact inverse (the finder writes scales past ×8
too, from its outlier screen). It is then one of two kinds:

- **search**: the true repair has the lower calibration loss. The objective prefers it; the search did not
  reach it.
- **objective**: the found spec has the lower (or equal) calibration loss. Given the true repair as a
  candidate, the search would still have written the spec it wrote.

Beside the mean answer loss, the same comparison by the other per-document statistics a finder could use
(documents answered right, the median of the per-document loss, the validation documents' loss), to say
which of them would have preferred the true repair. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from lm_eval_ssmsteer.studies import StudyArgumentError
from lm_eval_ssmsteer.studies.survey import WIN_BACK_GOAL, folder_settings, plants_folder, rebuild_survey

CONFIGS = ("damaged", "found", "planted x8", "inverse")
# per-document statistics a finder could minimize (lower is better for each): `_statistics`
STATISTICS = ("calibration loss", "calibration wrong", "calibration median", "validation loss")


def _statistics(cal, val) -> dict[str, float]:
    """The numbers ``STATISTICS`` name, lower is better for each, from per-document results."""
    return {
        "calibration loss": cal.summary().loss,
        "calibration wrong": float((~cal.right).sum()),
        "calibration median": statistics.median(cal.mean_loss.tolist()),
        "validation loss": val.summary().loss,
    }


REFERENCES = ("planted x8", "inverse")  # the true repairs, in the order a lost plant is judged against


def reference(row: dict) -> str | None:
    """The true repair a lost plant is judged against: the planted channels x8 when they win back the goal,
    else the exact inverse when it does, else None (no spec on the planted channels wins it back)."""
    for ref in REFERENCES:
        back = row[f"{ref} win-back"]
        if back is not None and back >= WIN_BACK_GOAL:
            return ref
    return None


def classify(row: dict) -> str:
    """'won' (the find won back the goal), 'unreachable' (no true repair does either), or which side lost
    the plant: 'search' (the true repair scores lower calibration loss than the found spec) or 'objective'."""
    if row["found win-back"] is not None and row["found win-back"] >= WIN_BACK_GOAL:
        return "won"
    ref = reference(row)
    if ref is None:
        return "unreachable"
    s = row["scores"]
    return "search" if s[ref]["calibration loss"] < s["found"]["calibration loss"] else "objective"


def prefers(row: dict) -> dict[str, bool]:
    """Per statistic: does it rank the plant's true repair (``reference``) strictly better than the found
    spec?"""
    s, ref = row["scores"], reference(row)
    return {name: s[ref][name] < s["found"][name] for name in STATISTICS}


def measure_folder(folder: Path, find: str, min_damage: float, device: str) -> list[dict]:
    from lm_eval_ssmsteer.finder.methods import per_document
    from lm_eval_ssmsteer.mamba.fastscan import fast_scan_if_allowed
    from lm_eval_ssmsteer.spec import SteeringSpec

    settings = folder_settings(folder)  # not a survey folder: stop before reading plants
    records = [json.loads(f.read_text()) for f in sorted(plants_folder(folder).glob("*.json"))]
    chosen = [r for r in records if r["damage"]["mean"] >= min_damage and find in r["finds"]]
    if not chosen:
        return []
    survey = rebuild_survey(folder, device, settings)
    cal, val = survey.calibration, survey.validation
    rows = []
    for r in chosen:
        started = time.time()
        p, f = r["plant"], r["finds"][find]
        model, channels = survey.replant(r), r["channels"]
        fo = f["found"]
        specs = {
            "damaged": None,
            "found": SteeringSpec.single(fo["layer"], fo["site"], fo["channels"], fo["scale"])
            if f["written"]
            else None,
            "planted x8": SteeringSpec.single(p["layer"], p["site"], channels, 8.0),
            "inverse": SteeringSpec.single(p["layer"], p["site"], channels, 1 / p["scale"]),
        }
        scores = {}
        with fast_scan_if_allowed(model):  # Mamba-1 on the CPU: the scan as one op, as find runs it
            for name, spec in specs.items():
                scores[name] = _statistics(per_document(model, cal, spec), per_document(model, val, spec))
        row = {
            "folder": folder.name,
            "plant": p,
            "damage": r["damage"]["mean"],
            "found": fo if f["written"] else None,
            "validation": f["validation"] or f["rejected"],
            "recorded calibration loss": f["calibration_loss"]["steered"],
            "found win-back": f["steered"]["win_back"]["value"] if f["steered"] else 0.0,
            "planted x8 win-back": r["planted_x8"]["win_back"]["value"],
            "inverse win-back": r["inverse"]["win_back"]["value"],
            "scores": scores,
            "seconds": round(time.time() - started, 1),
        }
        row["kind"] = classify(row)
        rows.append(row)
        print(f"{folder.name} {p['id']}: {row['kind']} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return rows


def _n(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict], find: str) -> str:
    for r in rows:
        r["kind"] = classify(r)
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("won", "search", "objective", "unreachable")}
    lost = [r for r in rows if r["kind"] in ("search", "objective")]
    by_ref = {ref: sum(reference(r) == ref for r in lost) for ref in REFERENCES}
    lines = [
        f"{len(rows)} damaging plants, find `{find}`: won back >= {WIN_BACK_GOAL} by the find: "
        f"{kinds['won']}; lost, where a true repair (the planted channels x8: {by_ref['planted x8']}, else "
        f"the exact inverse: {by_ref['inverse']}) wins back >= {WIN_BACK_GOAL}: {len(lost)}, of which the "
        f"true repair has the lower calibration loss (search) in {kinds['search']} and the found spec "
        f"(objective) in {kinds['objective']}; no true repair reaches the goal: {kinds['unreachable']}.",
        "",
        "Of the lost plants, how many each statistic ranks the true repair above the found spec:",
        "",
        "| statistic | true repair preferred |",
        "|---|---|",
    ]
    lines += [f"| {s} | {sum(prefers(r)[s] for r in lost)} of {len(lost)} |" for s in STATISTICS]
    lines += [
        "",
        "| plant | folder | planted | damage | found | validation | win-back found / planted x8 / inverse | "
        "kind | calibration loss damaged / found / planted x8 / inverse (found, recorded) | "
        "cal. wrong damaged / found / x8 / inverse | val. loss found / x8 / inverse |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, s, fo = r["plant"], r["scores"], r["found"]
        found = "identity"
        if fo is not None:
            found = f"L{fo['layer']} {fo['site']} {len(fo['channels'])} x{fo['scale']:g}"
        kind = r["kind"] + (f" (vs {reference(r)})" if r["kind"] in ("search", "objective") else "")
        lines.append(
            f"| {p['id']} | {r['folder']} | L{p['layer']} {p['site']} {p['count']} x{p['scale']:g} | "
            f"{r['damage']:.2f} | {found} | {r['validation'] or '–'} | "
            + " / ".join(_n(r[f"{c} win-back"], 2) for c in ("found", *REFERENCES))
            + f" | {kind} | "
            + " / ".join(_n(s[c]["calibration loss"]) for c in CONFIGS)
            + f" ({_n(r['recorded calibration loss'])}) | "
            + " / ".join(f"{s[c]['calibration wrong']:.0f}" for c in CONFIGS)
            + " | "
            + " / ".join(_n(s[c]["validation loss"]) for c in CONFIGS[1:])
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path, help="survey folders (settings.json and plants/)")
    ap.add_argument(
        "--find",
        default="outlier",
        help="the find option to examine, as the plant files name it (default: outlier, find's default "
        "before its narrow screen; today's default is "
        "outlier:validate=6:choice=paired:narrow=64:narrow_floor=4:grow=3)",
    )
    ap.add_argument("--min-damage", type=float, default=0.10, help="plants damaged at least this much")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON")
    ap.add_argument(
        "--table",
        type=Path,
        action="append",
        help="print the table of the rows an --out file holds (repeat to join several); runs no model",
    )
    a = ap.parse_args(argv)
    for folder in a.folders:
        if not plants_folder(folder).is_dir():
            ap.error(f"{folder}: no plants/ folder (not a survey folder)")
    if a.table:
        if a.folders:
            ap.error("--table runs no model: give --out files only, not survey folders")
        saved = [json.loads(f.read_text()) for f in a.table]
        finds = {d["find"] for d in saved}
        if len(finds) > 1:
            ap.error(f"--table: the files examine different finds {sorted(finds)}; give one find's files")
        rows = [r for d in saved for r in d["rows"]]
        print(table(rows, finds.pop()))
        return 0
    if not a.folders:
        ap.error("give survey folders, or --table FILE")
    rows = []
    for folder in a.folders:
        try:
            rows += measure_folder(folder, a.find, a.min_damage, a.device)
        except StudyArgumentError as e:  # no settings.json; a plant that draws other channels
            raise SystemExit(f"{folder.name} {e}") from None
    if not rows:
        ap.error(f"no plant with damage >= {a.min_damage} that find {a.find!r} ran on")
    if a.out:
        from lm_eval_ssmsteer.files import atomic_write_text

        atomic_write_text(a.out, json.dumps({"find": a.find, "rows": rows}, indent=1) + "\n")
    print(table(rows, a.find))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
