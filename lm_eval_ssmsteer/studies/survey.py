"""Plant survey: a fixed, seeded list of plants at every site, each scored for damage, then for recovery.

The plants (``survey_plants``) are drawn once, with SURVEY_SEED, from every site (all seven, less any a
hybrid's mixers cannot reach), every Mamba layer (every layer of a pure model; a hybrid's Mamba layers),
two channel counts per site width and three damping strengths (×0.1, ×0.05, and ×0.02, which saturates
where the damage saturates); per site half of them form the DESIGN set (what the search may be tuned
on) and half the HELD-OUT set (run only to report, never while designing). An UNSEEN set, drawn later
with UNSEEN_SEED from the combinations the first two left over, replaces the held-out set where that one
was looked at while designing (docs/finder.md says which); a FRESH set, drawn the same way with
FRESH_SEED from what the unseen set left, measures changes made after the unseen set was looked at. A
SEALED set, drawn with SEALED_SEED from the whole grid (the earlier sets used up ref-mamba2's combinations),
is new by its channels: every plant's channel draw has its own seed. It measures what was designed on the
fresh and unseen sets. A WITHHELD set, drawn the same way with WITHHELD_SEED, measures what was designed
with the sealed set in view (``--max-scale``). The list does not depend on any finder output, and every
plant is reported.

Per plant, on TEST documents of the tasks the model solves (default ssm_passkey, ssm_variable_tracking,
ssm_ruler_niah_single; the answer is the needle value without its final period, the string lm-eval's
string_match looks for; a document is right when every one of its answer tokens is the greedy choice,
teacher-forced):
1. the damage: intact minus damaged accuracy, paired per document, with an interval. Plants whose
   damage is below --min-damage (0.10) are reported and left out of the recovery rates;
2. two references on the damaged model: the exact inverse (the planted channels × 1/scale) and the
   planted channels ×8, the largest scale `find` tries;
3. for each `find` option (--finds): what it found, whether it names the planted layer and site (B/C and
   ssm_out/gate are one site on Mamba-1), the share of planted channels in its spec, its validation
   decision, and the paired win-back (steered − damaged) / (intact − damaged) of the test accuracy with a
   document-bootstrap interval, beside a random control (as many random channels at the found layer,
   site and scale).
`find` sees the CALIBRATION split of the same tasks and lengths (and its validation documents, drawn with
another seed), never the test documents.

    ssmsteer study survey --out survey/ --set design --plants D01 D02 --test-docs 8 --lengths 512
    ssmsteer study survey --out survey/ --device cuda --test-docs 40 --lengths 512 2048   # the full survey

Resumable: one JSON file per plant under OUT/plants/, written atomically when the plant is done; a
second run skips the plants already there, or runs only the --finds options a plant's file lacks (and
refuses an OUT made with other settings). OUT/summary.json
and OUT/table.md are rewritten from every plant file present at the end of each run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lm_eval_ssmsteer.studies import StudyArgumentError

SURVEY_SEED = 22
# the unseen set: drawn on 2026-12-04 after the search's design was fixed, and run once before any
# diagnostic looked at it (docs/finder.md, "Unseen plants"); a change to the search made since is
# measured on another set: the fresh set, drawn the same way with FRESH_SEED from what the others left
UNSEEN_SEED = 23
UNSEEN_PER_SITE = 12
FRESH_SEED = 24
# the sealed set: drawn on 2026-12-06, after the choice by a paired comparison was designed on the fresh and
# unseen sets; from the whole grid (True: only from the combinations the earlier sets left)
SEALED_SEED = 25
# the withheld set: drawn on 2026-12-06 (fifth session), after --max-scale's ladder was built with the sealed
# set's ceiling in view, to measure it and a default with it; from the whole grid, like the sealed set
WITHHELD_SEED = 26
# the kept set: drawn on 2026-12-07, after the narrow screen (find --narrow) was built from where the earlier
# sets' damaging plants lie among their sites' channel sizes; from the whole grid
KEPT_SEED = 27
# the reserve set: drawn on 2026-12-07 (fifth session), after the narrow screen's floor (find
# --narrow-floor) was chosen and the screen made method outlier's default with it, from the restoring scales
# of the earlier sets' damaging plants; from the whole grid
RESERVE_SEED = 28
# the extra set: drawn on 2026-12-07 (seventh session), after find --grow was built and surveyed on the six
# sets before it, to decide whether --grow 3 becomes the default (it does if here it wins back more plants
# than the default and loses none the default wins back); from the whole grid
EXTRA_SEED = 29
# the next set: drawn on 2026-12-07 (seventh session), after the extra set made --grow 3 the default, to
# decide whether the paired choice among 6 validated pairs (--validate-top 6 --validate-choice paired)
# joins it (it does if here outlier:validate=6:choice=paired wins back more plants than the default and
# loses none the default wins back); from the whole grid
NEXT_SEED = 30
# the trial set: drawn on 2026-12-07 (eighth session), after the survey's vdocs option (more validation
# documents) was built and tried on two plants of the earlier sets (CPU, docs/finder.md, "More validation
# documents"), to decide whether method outlier validates on 3 times as many documents by default (it does
# if here outlier:vdocs=12 wins back more plants than the default and loses none the default wins back);
# from the whole grid
TRIAL_SEED = 31
# the open set: drawn on 2026-12-07 (ninth session), after find --balance (Mamba-2's ssm_out and gate sizes
# set against what reads them, and the most extreme such pairs screened besides) was built and tried on two
# plants of the earlier sets (K64, U78; CPU, docs/finder.md, "Balance"), to decide whether method outlier
# balances by default (it does if here outlier:balance=1 wins back more plants than the default and loses
# none the default wins back); from the whole grid. Run 2026-12-08: both win back the same 11 of 23, so it
# does not (docs/results/finder/survey-open-gpu/)
OPEN_SEED = 32
# the gated set: drawn on 2026-12-08 (tenth session), after the open set (from the whole grid) left --balance
# off. Only 4 of the open set's 23 damaging records were Mamba-2 ssm_out or gate plants, the only ones balance
# acts on, and on the 20 such records of the earlier sets (picked by site, so deciding nothing) it won back 8
# against 1. So: every (layer, count, scale) of ssm_out and gate once, new channels, to be run on ref-mamba2's
# two folders (needles and copying). The rule, written before any run: method outlier balances by default if
# here outlier:balance=1 wins back more plants than the default and loses none the default wins back
GATED_SEED = 33
GATED_SITES = ("ssm_out", "gate")
GATED_PER_SITE = 36  # at least a 6-layer model's whole grid of a site (6 layers x 2 counts x 3 scales)
# (name, seed, plants per site, only from the combinations the earlier sets left, the sites (None: every one))
LATER_SETS = (
    ("unseen", UNSEEN_SEED, UNSEEN_PER_SITE, True, None),
    ("fresh", FRESH_SEED, UNSEEN_PER_SITE, True, None),
    ("sealed", SEALED_SEED, UNSEEN_PER_SITE, False, None),
    ("withheld", WITHHELD_SEED, UNSEEN_PER_SITE, False, None),
    ("kept", KEPT_SEED, UNSEEN_PER_SITE, False, None),
    ("reserve", RESERVE_SEED, UNSEEN_PER_SITE, False, None),
    ("extra", EXTRA_SEED, UNSEEN_PER_SITE, False, None),
    ("next", NEXT_SEED, UNSEEN_PER_SITE, False, None),
    ("trial", TRIAL_SEED, UNSEEN_PER_SITE, False, None),
    ("open", OPEN_SEED, UNSEEN_PER_SITE, False, None),
    ("gated", GATED_SEED, GATED_PER_SITE, False, GATED_SITES),
)
SURVEY_TASKS = ("ssm_passkey", "ssm_variable_tracking", "ssm_ruler_niah_single")
SCALES = (0.1, 0.05, 0.02)
PLANTS_PER_SITE = 6  # 3 design, 3 held-out
DOCS_PER_TASK = 4  # calibration documents per task and length: 12 at one length (find needs 8)
MIN_DAMAGE = 0.10
WIN_BACK_GOAL = 0.8
DEFAULT_FINDS = ("outlier", "causal", "probe")
SETS = (
    "design",
    "held-out",
    "unseen",
    "fresh",
    "sealed",
    "withheld",
    "kept",
    "reserve",
    "extra",
    "next",
    "trial",
    "open",
    "gated",
)


def _counts(width: int) -> tuple[int, int]:
    """Two channel counts for a site of ``width`` channels: a few, and a larger share (≤ 32, `find`'s
    default --max-channels)."""
    return max(1, min(16, width // 8)), min(32, max(2, width // 4))


@dataclass(frozen=True)
class Plant:
    # D01... (design), H01... (held-out), U01... (unseen), F01... (fresh), S01... (sealed), W01... (withheld),
    # K01... (kept), R01... (reserve), E01... (extra),
    # N01... (next), T01... (trial), O01... (open), G01... (gated)
    id: str
    set: str
    layer: int
    site: str
    count: int
    scale: float
    seed: int  # of the channel draw


def survey_plants(layers: int | Sequence[int], widths: dict[str, int]) -> list[Plant]:
    """The fixed plant list: per site PLANTS_PER_SITE distinct (layer, count, scale) drawn with SURVEY_SEED,
    alternately design and held-out, then UNSEEN_PER_SITE more per site drawn with UNSEEN_SEED from the
    combinations left, then as many again (fewer where fewer are left) with FRESH_SEED from what those left,
    then as many again with SEALED_SEED, WITHHELD_SEED, KEPT_SEED, RESERVE_SEED, EXTRA_SEED, NEXT_SEED,
    TRIAL_SEED and OPEN_SEED from the whole grid, then with GATED_SEED every combination of the
    GATED_SITES (up to GATED_PER_SITE a site) in a seeded order; channel seeds 100, 101, ... in list order.
    ``layers``: the layer count of a pure model, or a hybrid's Mamba layer indices; ``widths``: the sites to
    plant at (a site a model's mixers cannot reach is left out) and their widths."""
    from lm_eval_ssmsteer.mamba.sites import SITES

    layers = range(layers) if isinstance(layers, int) else layers
    sites = [s for s in SITES if s in widths]
    grids = {
        site: [(layer, c, s) for layer in layers for c in _counts(widths[site]) for s in SCALES]
        for site in sites
    }
    drawn: list[tuple[str, int, str, int, float]] = []
    rng = random.Random(SURVEY_SEED)
    for site in sites:
        for i, (layer, count, scale) in enumerate(
            rng.sample(grids[site], min(PLANTS_PER_SITE, len(grids[site])))
        ):
            drawn.append((SETS[i % 2], layer, site, count, scale))
    for which, seed, per_site, only_left, only_sites in LATER_SETS:
        rng = random.Random(seed)
        for site in sites if only_sites is None else [s for s in sites if s in only_sites]:
            taken = {(layer, count, scale) for _, layer, s, count, scale in drawn if s == site}
            left = [c for c in grids[site] if not (only_left and c in taken)]
            for layer, count, scale in rng.sample(left, min(per_site, len(left))):
                drawn.append((which, layer, site, count, scale))
    plants, numbers = [], {name: 0 for name in SETS}
    for seed, (which, layer, site, count, scale) in enumerate(drawn, start=100):
        numbers[which] += 1
        plant_id = f"{which[0].upper()}{numbers[which]:02d}"
        plants.append(Plant(plant_id, which, layer, site, count, scale, seed))
    return plants


@dataclass(frozen=True)
class FindOption:
    """One way of running `find`: METHOD, METHOD:screen=N, METHOD:validate=N, METHOD:choice=paired,
    outlier:order=HOW, METHOD:descend=N, METHOD:blocks=N, METHOD:max_scale=S, outlier:narrow=W,
    outlier:narrow_floor=R, METHOD:grow=N, METHOD:vdocs=N, outlier:balance=1. The fields' defaults are the
    options off, and ``name`` writes every field that is not, so a name means the same find whatever find's
    defaults are: ``parse_find`` gives method outlier find's narrow screen (narrow=64:narrow_floor=4) unless
    the text turns it off (narrow=0), find's grow (grow=3) unless grow=0, and find's paired choice among 6
    validated pairs (validate=6:choice=paired) unless validate=1; a plant file's ``outlier`` from before those
    defaults ran without any, its ``outlier:narrow=64:narrow_floor=4`` without grow and the paired choice, its
    ``outlier:narrow=64:narrow_floor=4:grow=3`` without the paired choice."""

    method: str
    screen: int = 3
    validate: int = 1
    order: str = "gradient"
    descend: int = 0
    blocks: int = 0
    choice: str = "gain"
    max_scale: int = 8
    narrow: int = 0
    narrow_floor: float = 0.0
    grow: int = 0
    vdocs: int = 0  # validation documents a task and length (0: as the folder's --docs-per-task)
    balance: int = 0  # 1: find's --balance

    @property
    def name(self) -> str:
        name = self.method if self.screen == 3 else f"{self.method}:screen={self.screen}"
        name = name if self.validate == 1 else f"{name}:validate={self.validate}"
        name = name if self.choice == "gain" else f"{name}:choice={self.choice}"
        name = name if self.order == "gradient" else f"{name}:order={self.order}"
        name = name if self.descend == 0 else f"{name}:descend={self.descend}"
        name = name if self.blocks == 0 else f"{name}:blocks={self.blocks}"
        name = name if self.max_scale == 8 else f"{name}:max_scale={self.max_scale}"
        name = name if self.narrow == 0 else f"{name}:narrow={self.narrow}"
        name = name if self.narrow_floor == 0 else f"{name}:narrow_floor={self.narrow_floor:g}"
        name = name if self.grow == 0 else f"{name}:grow={self.grow}"
        name = name if self.vdocs == 0 else f"{name}:vdocs={self.vdocs}"
        return name if self.balance == 0 else f"{name}:balance=1"


def _passes(check: str, *args) -> bool:
    """Whether find's own check (``finder.search.<check>``, where its rule lives) accepts ``args``."""
    from lm_eval_ssmsteer.finder import search

    try:
        getattr(search, check)(*args)
    except (ValueError, search.FinderError):
        return False
    return True


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_find(text: str) -> FindOption:
    """A --finds value METHOD[:screen=N][:validate=N][:choice=paired][:order=HOW][:descend=N][:blocks=N]
    [:max_scale=S][:narrow=W][:narrow_floor=R][:grow=N][:vdocs=N][:balance=1] (order, narrow, narrow_floor and
    balance: method outlier only, whose narrow screen is on unless narrow=0, which grows 3 rounds unless
    grow=0 and which validates 6 pairs with choice=paired unless validate=1; blocks: methods causal and
    outlier; choice: with validate=N, N > 1; S from 8 to MAX_SCALE_LIMIT; vdocs: the validation documents a
    task and length, drawn as the folder's are, where they are otherwise as many as its calibration
    documents)."""
    from lm_eval_ssmsteer.finder.methods import METHODS, STEEP_ORDERS, VALIDATE_CHOICES
    from lm_eval_ssmsteer.finder.search import (
        BLOCK_METHODS,
        MAX_SCALE_LIMIT,
        NARROW_FLOOR,
        default_grow,
        default_narrow,
        default_validation,
    )

    method, *options = text.split(":")
    values: dict = {
        "screen": 3,
        "validate": None,
        "order": "gradient",
        "descend": 0,
        "blocks": 0,
        "choice": None,
        "max_scale": 8,
        "narrow": default_narrow(method),
        "narrow_floor": NARROW_FLOOR if default_narrow(method) else 0.0,
        "grow": default_grow(method),
        "vdocs": 0,
        "balance": 0,
    }
    for option in options:
        key, _, value = option.partition("=")
        counted = ("screen", "validate", "descend", "grow", "vdocs")
        number = key in counted and value.isdigit() and int(value) >= 1
        number = number or (key == "grow" and value == "0")
        number = number or (
            key == "blocks" and value.isdigit() and int(value) >= 1 and method in BLOCK_METHODS
        )
        number = number or (key == "max_scale" and value.isdigit() and _passes("check_max_scale", int(value)))
        narrow = key == "narrow" and value.isdigit()
        number = number or (narrow and _passes("check_narrow", int(value), method))
        order = key == "order" and value in STEEP_ORDERS and method == "outlier"
        choice = key == "choice" and value in VALIDATE_CHOICES
        number = number or (key == "balance" and value in ("0", "1") and method == "outlier")
        if key == "narrow_floor" and method == "outlier" and _passes("check_narrow_floor", _as_float(value)):
            values[key] = float(value)
            continue
        if not (number or order or choice):
            raise argparse.ArgumentTypeError(
                f"--finds: {text!r}; allowed: METHOD, METHOD:screen=N, METHOD:validate=N, METHOD:descend=N, "
                f"METHOD:grow=N (N >= 0; 0: off), METHOD:choice={'|'.join(VALIDATE_CHOICES)}, "
                f"outlier:order={'|'.join(STEEP_ORDERS)}, causal|outlier:blocks=N, METHOD:max_scale=S "
                f"(8 <= S <= {MAX_SCALE_LIMIT}), outlier:narrow=W (W >= 0; 0: off), "
                "outlier:narrow_floor=R (R >= 0), METHOD:vdocs=N (N >= 1), outlier:balance=0|1, "
                "or several joined by ':'"
            )
        values[key] = int(value) if number else value
    if method not in METHODS:
        raise argparse.ArgumentTypeError(
            f"--finds: {method!r} is not a method; allowed: {', '.join(METHODS)}"
        )
    values["validate"], values["choice"] = default_validation(method, values["validate"], values["choice"])
    if values["choice"] != "gain" and values["validate"] < 2:
        raise argparse.ArgumentTypeError(
            f"--finds: {text!r}; choice={values['choice']} chooses among validated pairs: give validate=N, "
            "N >= 2, with it"
        )
    if values["narrow"] == 0:
        if any(option.startswith("narrow_floor=") for option in options):
            raise argparse.ArgumentTypeError(
                f"--finds: {text!r}; narrow_floor is the narrow screen's: give it without narrow=0"
            )
        values["narrow_floor"] = 0.0
    return FindOption(method, **values)


def value_pairs(tasks, split: str, docs: int, lengths, seed: int, count_tokens) -> list[tuple[str, str]]:
    """(context, value) documents: each task at each length; the value is the answer without its final
    period (what the tasks' string match looks for)."""
    from lm_eval_ssmsteer.finder.data import task_pairs

    return [
        (context, answer.rstrip("."))
        for length in lengths
        for context, answer in task_pairs(
            list(tasks), split, docs, seed=seed, length=length, count_tokens=count_tokens
        )
    ]


def _settings(a: argparse.Namespace) -> dict:
    """What makes two runs' plant files comparable (resuming checks it)."""
    return {
        "model": a.model,
        "tasks": list(a.tasks),
        "lengths": list(a.lengths),
        "test_docs": a.test_docs,
        "docs_per_task": a.docs_per_task,
        "survey_seed": SURVEY_SEED,
    }


def _spec(layer: int, site: str, channels: list[int], scale: float):
    from lm_eval_ssmsteer.spec import SteeringSpec

    return SteeringSpec.single(layer, site, channels, scale)


def _rounded(x):
    return None if x is None else round(x, 4)


def measure_plant(
    plant: Plant, path: str, a: argparse.Namespace, data: dict, intact, finds: list[FindOption]
) -> dict:
    """Damage, references and each of ``finds`` for one plant (a fresh copy of the model)."""
    from lm_eval_ssmsteer.finder import find
    from lm_eval_ssmsteer.finder.paired import paired_difference, win_back
    from lm_eval_ssmsteer.loading import load_model
    from lm_eval_ssmsteer.mamba.arch import describe_model
    from lm_eval_ssmsteer.mamba.sites import same_site
    from lm_eval_ssmsteer.studies.damping import control_channels
    from lm_eval_ssmsteer.studies.damping import plant as plant_damage
    from lm_eval_ssmsteer.studies.plant import test_scores_per_document

    model, _ = load_model(path, device=a.device)
    arch = describe_model(model)
    channels = plant_damage(model, plant.layer, plant.site, plant.count, plant.scale, plant.seed)
    test = data["test"]
    damaged = test_scores_per_document(model, test)
    damage = paired_difference(damaged.right.double(), intact.right.double())  # intact - damaged

    def scored(spec) -> dict:
        steered = test_scores_per_document(model, test, spec)
        back = win_back(intact.right, damaged.right, steered.right)
        return {
            "accuracy": float(steered.right.double().mean()),
            "loss": steered.summary().loss,
            "vs_damaged": paired_difference(damaged.right.double(), steered.right.double()).as_dict(),
            "win_back": back.as_dict(),
        }

    row: dict = {
        "plant": asdict(plant),
        "channels": channels,
        "intact": {"accuracy": float(intact.right.double().mean()), "loss": intact.summary().loss},
        "damaged": {"accuracy": float(damaged.right.double().mean()), "loss": damaged.summary().loss},
        "damage": damage.as_dict(),
        "damaging": damage.mean >= a.min_damage,
        "inverse": scored(_spec(plant.layer, plant.site, channels, 1 / plant.scale)),
        "planted_x8": scored(_spec(plant.layer, plant.site, channels, 8.0)),
        "finds": {},
    }
    for option in finds if row["damaging"] or not a.only_damaging else ():
        started = time.time()
        result = find(
            model,
            data["calibration"],
            method=option.method,
            screen=option.screen,
            validation=data["validation_by"][option.vdocs] if option.vdocs else data["validation"],
            validate_top=option.validate,
            validate_choice=option.choice,
            steep_order=option.order,
            descend=option.descend,
            blocks=option.blocks,
            max_scale=option.max_scale,
            narrow=option.narrow,
            narrow_floor=option.narrow_floor,
            grow=option.grow,
            balance=bool(option.balance),
            progress=False,
            model_name=f"{a.model} {plant.id}",
        )
        seconds = time.time() - started
        iv = result.spec.interventions[0]
        found = list(iv.channels) if isinstance(iv.channels, tuple) else list(range(arch.site_width(iv.site)))
        layer_ok = iv.layers[0] == plant.layer
        site_ok = same_site(iv.site, plant.site, arch.family)
        hit = sorted(set(found) & set(channels)) if layer_ok and site_ok and iv.scale != 1.0 else []
        avoid = channels if layer_ok and site_ok else None
        if iv.scale != 1.0 and len(found) < arch.site_width(iv.site):
            control_ch, _ = control_channels(arch.site_width(iv.site), len(found), avoid)
            control = scored(_spec(iv.layers[0], iv.site, control_ch, iv.scale))
        else:
            control = None
        validation = result.scores["validation"]
        row["finds"][option.name] = {
            "seconds": round(seconds, 1),
            "found": {"layer": iv.layers[0], "site": iv.site, "channels": found, "scale": iv.scale},
            "written": iv.scale != 1.0,
            "rejected": result.rejected,
            "validation": None if validation is None else validation["decision"],
            "layer_site": layer_ok and site_ok and iv.scale != 1.0,
            "recall": len(hit) / len(channels),
            "calibration_loss": {"damaged": result.base.loss, "steered": result.best.loss},
            # what the choice was made among: each validated point's calibration loss and validation gain,
            # and (descend) the channels each descent kept
            "candidates": None if validation is None else validation["candidates"],
            # choice=paired: the paired comparison of the validation's best with the calibration's choice
            **({"switch": validation["switch"]} if validation and "switch" in validation else {}),
            "descended": result.scores["raw"].get("descend"),
            "blocks": result.scores["raw"].get("blocks"),
            **({"narrow": result.scores["raw"]["narrow"]} if "narrow" in result.scores["raw"] else {}),
            **({"grow": result.scores["raw"]["grow"]} if "grow" in result.scores["raw"] else {}),
            "steered": scored(result.spec) if iv.scale != 1.0 else None,
            "random": control,
        }
    return row


def summarize(rows: list[dict], finds: list[str], min_damage: float) -> dict:
    """Per set and find option, over the plants whose damage is at least ``min_damage``: layer and site
    found, mean channel recall, win-back (median, share ≥ WIN_BACK_GOAL) and the random control's."""
    out: dict = {}
    for which in SETS:
        of_set = [r for r in rows if r["plant"]["set"] == which]
        damaging = [r for r in of_set if r["damage"]["mean"] >= min_damage]
        block = {"plants": len(of_set), "damaging": len(damaging), "finds": {}}
        for name in finds:
            runs = [r["finds"][name] for r in damaging if name in r["finds"]]
            if not runs:
                continue
            backs = [f["steered"]["win_back"]["value"] if f["steered"] else 0.0 for f in runs]
            controls = [f["random"]["win_back"]["value"] for f in runs if f["random"]]
            backs_sorted = sorted(b for b in backs if b is not None)
            block["finds"][name] = {
                "plants": len(runs),
                "layer_site": sum(f["layer_site"] for f in runs) / len(runs),
                "recall": sum(f["recall"] for f in runs) / len(runs),
                "win_back_median": backs_sorted[len(backs_sorted) // 2] if backs_sorted else None,
                "win_back_at_goal": sum(b is not None and b >= WIN_BACK_GOAL for b in backs) / len(runs),
                "random_win_back_mean": sum(c for c in controls if c is not None) / len(controls)
                if controls
                else None,
                "seconds_mean": sum(f["seconds"] for f in runs) / len(runs),
            }
        out[which] = block
    return out


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _number(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def _interval(d: dict) -> str:
    if d["value"] is None:
        return "no damage"
    return f"{d['value']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"


def _found_text(f: dict) -> str:
    """A find option's spec in a table cell: L<layer> <site> <channels> x<scale>, or identity."""
    fo = f["found"]
    return (
        f"L{fo['layer']} {fo['site']} {len(fo['channels'])} x{fo['scale']:g}" if f["written"] else "identity"
    )


def table(rows: list[dict], summary: dict, settings: dict, test_docs: int, min_damage: float) -> str:
    """Markdown: the summary per set, then one line per plant and find option."""
    lines = [
        f"Survey of {len(rows)} plants on {settings['model']}; {test_docs} TEST documents "
        f"({', '.join(settings['tasks'])} at {', '.join(map(str, settings['lengths']))} tokens); recovery "
        f"over plants with damage >= {min_damage:.2f}; intervals: {90}% document bootstrap.",
        "",
        "| set | find | damaging plants / all | layer+site found | planted channels found (mean) | "
        f"win-back >= {WIN_BACK_GOAL} | win-back median | random control win-back (mean) | find s (mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for which, block in summary.items():
        for name, s in block["finds"].items():
            lines.append(
                f"| {which} | {name} | {block['damaging']} / {block['plants']} | {_pct(s['layer_site'])} | "
                f"{_pct(s['recall'])} | {_pct(s['win_back_at_goal'])} | "
                f"{_number(s['win_back_median'])} | {_number(s['random_win_back_mean'])} | "
                f"{s['seconds_mean']:.0f} |"
            )
        if not block["finds"]:
            lines.append(f"| {which} | – | {block['damaging']} / {block['plants']} | | | | | | |")
    lines += [
        "",
        "| plant | set | layer site channels x scale | damage (acc) | inverse win-back | planted x8 win-back "
        "| find | found | layer+site | recall | validation | win-back | random win-back | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["plant"]
        d = r["damage"]
        head = (
            f"| {p['id']} | {p['set']} | L{p['layer']} {p['site']} {p['count']} x{p['scale']:g} | "
            f"{d['mean']:.2f} [{d['low']:.2f}, {d['high']:.2f}] | {_interval(r['inverse']['win_back'])} | "
            f"{_interval(r['planted_x8']['win_back'])} |"
        )
        if not r["finds"]:
            lines.append(f"{head} – | not run (damage below --min-damage) | | | | | | |")
        for name, f in r["finds"].items():
            lines.append(
                f"{head} {name} | {_found_text(f)} | {'yes' if f['layer_site'] else 'no'} | "
                f"{_pct(f['recall'])} | "
                f"{f['validation'] or f['rejected'] or '–'} | "
                f"{_interval(f['steered']['win_back']) if f['steered'] else '0 (identity)'} | "
                f"{_interval(f['random']['win_back']) if f['random'] else '–'} | {f['seconds']:.0f} |"
            )
    return "\n".join(lines)


def plants_folder(folder: Path) -> Path:
    """Where a survey folder keeps its plant files: ``FOLDER/plants``, or ``FOLDER/survey/plants`` (a GPU
    run's folder, the survey one level down)."""
    return folder / "plants" if (folder / "plants").is_dir() else folder / "survey" / "plants"


def folder_settings(folder: Path) -> dict:
    """A survey folder's ``settings.json``: ``FOLDER/settings.json``, or ``FOLDER/survey/settings.json``
    (a GPU run's folder). Raises StudyArgumentError when there is neither."""
    for f in (folder / "settings.json", folder / "survey" / "settings.json"):
        if f.exists():
            return json.loads(f.read_text())
    raise StudyArgumentError(f"{folder}: no settings.json (not a survey folder)")


@dataclass
class RebuiltSurvey:
    """What a survey folder's finds saw, rebuilt from its settings: the intact model, its tokenizer, and
    the find's calibration and validation batches and the encoded TEST documents, on ``device``."""

    settings: dict
    path: str
    device: str
    model: object
    tokenizer: object
    calibration: list
    validation: list
    test: list

    def replant(self, record: dict) -> object:
        """A fresh copy of the model damaged as a plant record says; raises StudyArgumentError when the
        channels the plant draws differ from the record's (another model, or another draw)."""
        from lm_eval_ssmsteer.loading import load_model
        from lm_eval_ssmsteer.studies.damping import plant

        p = record["plant"]
        model, _ = load_model(self.path, device=self.device)
        if plant(model, p["layer"], p["site"], p["count"], p["scale"], p["seed"]) != record["channels"]:
            raise StudyArgumentError(f"{p['id']}: planted channels differ from the record")
        return model


def rebuild_survey(folder: Path, device: str, settings: dict | None = None) -> RebuiltSurvey:
    """Load a survey folder's model and rebuild its find documents (``find_documents``) from its
    settings (``settings``, where the caller has read them already), as ``study survey`` made them, so
    that a plant can be damaged again and scored."""
    from lm_eval_ssmsteer.loading import load_model, resolve_model_path

    settings = folder_settings(folder) if settings is None else settings
    path = resolve_model_path(settings["model"])
    model, tokenizer = load_model(path, device=device)
    data, _ = find_documents(tokenizer, argparse.Namespace(**{**settings, "device": device}))
    cal, val = (
        [(ids.to(device), labels.to(device)) for ids, labels in data[k].batches()]
        for k in ("calibration", "validation")
    )
    return RebuiltSurvey(settings, path, device, model, tokenizer, cal, val, data["test"])


def pooled_table(folders: list[Path], which: str, min_damage: float) -> str:
    """Several survey folders (models, task sets) as one: per find option, over their plants of set
    ``which`` (or all) whose damage is at least ``min_damage``, the layer+site rate, the mean share of
    planted channels, the win-backs at WIN_BACK_GOAL, their median (lower median for an even count) and the
    random controls' range; then the same per planted site and per damping strength (``_by_site``,
    ``_by_damping``), the win-backs per validation decision (``_by_decision``); then the plants one by
    one, every option side by side."""
    rows: list[tuple[str, dict]] = []
    for folder in folders:
        plants = plants_folder(folder)
        files = sorted(plants.glob("*.json"))
        if not files:
            raise StudyArgumentError(f"--pool: no plant files under {folder} (looked in {plants})")
        rows += [(folder.name, json.loads(f.read_text())) for f in files]
    damaging = [
        (name, r)
        for name, r in rows
        if which in ("all", r["plant"]["set"]) and r["damage"]["mean"] >= min_damage and r["finds"]
    ]
    finds = list(dict.fromkeys(f for _, r in damaging for f in r["finds"]))
    of_set = sum(which in ("all", r["plant"]["set"]) for _, r in rows)
    lines = [
        f"{len(damaging)} of {of_set} plants (set {which}) cost >= {min_damage:g}",
        "",
        f"| find | plants | layer+site found | planted channels (mean) | win-back >= {WIN_BACK_GOAL:g} "
        "| win-back median | random controls |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in finds:
        runs = [r["finds"][name] for _, r in damaging if name in r["finds"]]
        backs = sorted(_back(f) for f in runs)
        controls = [f["random"]["win_back"]["value"] for f in runs if f["random"]]
        spread = f"{min(controls):.2f} to {max(controls):.2f}" if controls else "–"
        lines.append(
            f"| {name} | {len(runs)} | {sum(f['layer_site'] for f in runs)} of {len(runs)} "
            f"| {_pct(sum(f['recall'] for f in runs) / len(runs))} "
            f"| {sum(b >= WIN_BACK_GOAL for b in backs)} of {len(runs)} | {backs[(len(backs) - 1) // 2]:.2f} "
            f"| {spread} |"
        )
    lines += ["", *_by_site(damaging, finds), "", *_by_damping(damaging, finds)]
    lines += ["", *_by_decision(damaging, finds)]
    lines += ["", f"| folder | plant | damage | {' | '.join(finds)} |", "|---|---|---|" + "---|" * len(finds)]
    for name, r in damaging:
        pl = r["plant"]
        cells = []
        for option in finds:
            f = r["finds"].get(option)
            if f is None:
                cells.append("–")
                continue
            back = f"{f['steered']['win_back']['value']:.2f}" if f["steered"] else "0"
            cells.append(f"{_found_text(f)}, {back}")
        lines.append(
            f"| {name} | {pl['id']} L{pl['layer']} {pl['site']} {pl['count']} x{pl['scale']:g} "
            f"| {r['damage']['mean']:.2f} | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def _back(find_row: dict) -> float:
    """A find's win-back on the TEST documents; 0 where it wrote the identity."""
    return find_row["steered"]["win_back"]["value"] if find_row["steered"] else 0.0


def _by_site(damaging: list[tuple[str, dict]], finds: list[str]) -> list[str]:
    """Per planted site: the plants, how many the planted channels ×8 (the largest scale `find` tries)
    win back to WIN_BACK_GOAL, and per find option how many it located and won back: whether a miss is
    the search's ranking (the ×8 spec repairs, and `find` did not write it) or beyond its scales."""
    return _by_group(damaging, finds, "site", lambda plant: plant["site"])


def _by_damping(damaging: list[tuple[str, dict]], finds: list[str]) -> list[str]:
    """The same per damping strength (the plant's scale, strongest first): the damage regime."""
    rows = sorted(damaging, key=lambda row: row[1]["plant"]["scale"])
    return _by_group(rows, finds, "damping", lambda plant: f"x{plant['scale']:g}")


def _by_decision(damaging: list[tuple[str, dict]], finds: list[str]) -> list[str]:
    """Per find option and validation decision: how many specs, and what they won back on the TEST
    documents (median, how many reach WIN_BACK_GOAL): what the decision predicts."""
    decisions = ("better", "undecided", "worse")
    lines = [
        "| find | "
        + " | ".join(f"{d}: specs, win-back median, >= {WIN_BACK_GOAL:g}" for d in decisions)
        + " |",
        "|---|" + "---|" * len(decisions),
    ]
    for name in finds:
        runs = [r["finds"][name] for _, r in damaging if name in r["finds"]]
        cells = []
        for decision in decisions:
            backs = sorted(_back(f) for f in runs if f.get("validation") == decision)
            median = f"{backs[(len(backs) - 1) // 2]:.2f}" if backs else "–"
            cells.append(f"{len(backs)}, {median}, {sum(b >= WIN_BACK_GOAL for b in backs)}")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def _by_group(damaging: list[tuple[str, dict]], finds: list[str], label: str, key) -> list[str]:
    """The plants grouped by ``key(plant)`` in order of first appearance: the ``_by_site`` columns."""
    groups = list(dict.fromkeys(key(r["plant"]) for _, r in damaging))
    lines = [
        f"| {label} | plants | planted channels ×8 win back >= {WIN_BACK_GOAL:g} | "
        + " | ".join(f"{name}: located / won back" for name in finds)
        + " |",
        "|---|---|---|" + "---|" * len(finds),
    ]
    for group in groups:
        rows = [r for _, r in damaging if key(r["plant"]) == group]
        x8 = [r["planted_x8"]["win_back"]["value"] for r in rows if r.get("planted_x8")]
        cells = []
        for name in finds:
            runs = [r["finds"][name] for r in rows if name in r["finds"]]
            if not runs:
                cells.append("–")
                continue
            won = sum(_back(f) >= WIN_BACK_GOAL for f in runs)
            cells.append(f"{sum(f['layer_site'] for f in runs)} / {won} of {len(runs)}")
        ceiling = f"{sum(v >= WIN_BACK_GOAL for v in x8)} of {len(x8)}" if x8 else "–"
        lines.append(f"| {group} | {len(rows)} | {ceiling} | {' | '.join(cells)} |")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="ref-mamba1")
    p.add_argument("--out", type=Path, help="folder (created); plants/ID.json, summary, table")
    p.add_argument("--set", choices=(*SETS, "all"), default="all", help="which plants to run (default all)")
    p.add_argument("--plants", nargs="+", help="only these plant ids (e.g. D01 H03)")
    p.add_argument(
        "--finds",
        nargs="+",
        type=parse_find,
        default=[parse_find(f) for f in DEFAULT_FINDS],
        help="find options, METHOD[:screen=N][:validate=N][:choice=gain|paired][:descend=N][:max_scale=S]"
        "[:grow=N][:vdocs=N] (grow 0: off; outlier grows 3 rounds unless grow=0, and validates 6 pairs with "
        "choice=paired unless validate=1; vdocs: validation documents a task and length, default as "
        "--docs-per-task), "
        "for causal and outlier also :blocks=N, and for outlier also :order=gradient|size|ratio, "
        ":narrow=W (0: off), :narrow_floor=R and :balance=1 (find --balance); a plant file names each by "
        "every option that is on "
        f"(default: {' '.join(DEFAULT_FINDS)})",
    )
    p.add_argument("--tasks", nargs="+", default=list(SURVEY_TASKS))
    p.add_argument("--lengths", nargs="+", type=int, default=[512], help="prompt lengths in tokens")
    p.add_argument("--test-docs", type=int, default=8, help="TEST documents per task and length (default 8)")
    p.add_argument(
        "--docs-per-task",
        type=int,
        default=DOCS_PER_TASK,
        help=f"calibration (and validation) documents per task and length (default {DOCS_PER_TASK})",
    )
    p.add_argument("--min-damage", type=float, default=MIN_DAMAGE)
    p.add_argument(
        "--only-damaging",
        action="store_true",
        help="run the finds only on plants whose damage is at least --min-damage (the others are left out "
        "of the recovery rates anyway; default: every plant)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--list", action="store_true", help="print the plant list and stop")
    p.add_argument(
        "--pool",
        nargs="+",
        type=Path,
        metavar="FOLDER",
        help="print tables over these survey folders' plant files (of --set, damage >= --min-damage): per "
        "find option, then per planted site, per damping strength and per validation decision, then plant "
        "by plant; and stop; no model is loaded",
    )


def _check(a: argparse.Namespace, plants: list[Plant]) -> list[Plant]:
    from lm_eval_ssmsteer.taskdata import TASKS

    unknown = [t for t in a.tasks if t not in TASKS]
    if unknown:
        raise StudyArgumentError(f"--tasks: unknown task(s) {unknown}; allowed: {', '.join(TASKS)}")
    for flag, value in (("--test-docs", a.test_docs), ("--docs-per-task", a.docs_per_task)):
        if value < 1:
            raise StudyArgumentError(f"{flag}: {value} is too small; allowed: an integer >= 1")
    if any(length < 1 for length in a.lengths):
        raise StudyArgumentError(f"--lengths: {a.lengths}; allowed: integers >= 1")
    if a.out.exists() and not a.out.is_dir():
        raise StudyArgumentError(f"--out: {str(a.out)!r} is a file; give a folder")
    chosen = [p for p in plants if a.set in ("all", p.set)]
    if a.plants:
        known = {p.id for p in plants}
        bad = [i for i in a.plants if i not in known]
        if bad:
            raise StudyArgumentError(f"--plants: unknown id(s) {bad}; allowed: {', '.join(sorted(known))}")
        chosen = [p for p in chosen if p.id in a.plants]
        if not chosen:
            raise StudyArgumentError(f"--plants {a.plants} with --set {a.set}: no plant is in both")
    return chosen


def _plant_list(path: str):
    """The model's shape (from its config, before any weight is loaded) and the survey's plant list."""
    from transformers import AutoConfig

    from lm_eval_ssmsteer.mamba.arch import MAMBA1, MAMBA2, UnsupportedModelError, describe_config
    from lm_eval_ssmsteer.mamba.sites import SITES

    try:
        arch = describe_config(AutoConfig.from_pretrained(path))
    except (OSError, UnsupportedModelError) as exc:
        raise StudyArgumentError(f"--model {path!r}: {exc}") from None
    if arch.family not in (MAMBA1, MAMBA2):
        raise StudyArgumentError(
            f"--model {path!r}: plants are for Mamba-1 and Mamba-2 mixers; this model is {arch.family} "
            f"({arch.architecture})"
        )
    refused = {site for site, _ in arch.refused_sites}
    widths = {site: arch.site_width(site) for site in SITES if site not in refused}
    return survey_plants(arch.steerable_layers, widths)


def find_documents(tokenizer, a: argparse.Namespace, vdocs: Iterable[int] = ()) -> tuple[dict, object]:
    """Calibration and validation documents for find, and the encoded TEST documents; for each count in
    ``vdocs`` (a find option's ``vdocs=N``), validation documents drawn the same way with N a task and length
    (``data["validation_by"][N]``)."""
    from lm_eval_ssmsteer.finder.data import VALIDATION_SEED, encode_pairs, token_counter, without

    count = token_counter(tokenizer)
    calibration = value_pairs(a.tasks, "calibration", a.docs_per_task, a.lengths, 0, count)

    def validation(n: int):
        drawn = value_pairs(a.tasks, "calibration", n, a.lengths, VALIDATION_SEED, count)
        return encode_pairs(tokenizer, without(drawn, calibration), "calibration split, seed 1 (values)")

    test = encode_pairs(
        tokenizer, value_pairs(a.tasks, "test", a.test_docs, a.lengths, 0, count), "test split"
    )
    data = {
        "calibration": encode_pairs(tokenizer, calibration, "calibration split (values)"),
        "validation": validation(a.docs_per_task),
        "validation_by": {n: validation(n) for n in sorted(set(vdocs))},
        "test": [(ids.to(a.device), labels.to(a.device)) for ids, labels in test.batches()],
    }
    return data, test


def run(a: argparse.Namespace) -> int:
    from lm_eval_ssmsteer.files import atomic_write_text
    from lm_eval_ssmsteer.finder.data import FinderError
    from lm_eval_ssmsteer.loading import load_model, resolve_model_path
    from lm_eval_ssmsteer.studies.plant import test_scores_per_document
    from lm_eval_ssmsteer.taskdata import TaskDataError

    if a.pool:
        print(pooled_table(a.pool, a.set, a.min_damage))
        return 0
    if a.out is None and not a.list:
        raise StudyArgumentError(
            "--out is required (a folder for the plant files), unless --pool or --list is given"
        )
    path = resolve_model_path(a.model)
    plants = _plant_list(path)
    if a.list:
        for p in plants:
            if a.set in ("all", p.set) and (not a.plants or p.id in a.plants):
                print(f"{p.id} {p.set:8} L{p.layer} {p.site:9} {p.count:3} x{p.scale:g} seed {p.seed}")
        return 0
    chosen = _check(a, plants)
    settings = _settings(a)
    settings_file = a.out / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
        raise StudyArgumentError(
            f"--out {a.out}: made with other settings ({settings_file}); resume with the same ones or use "
            "another folder"
        )
    model, tokenizer = load_model(path, device=a.device)
    try:
        data, test = find_documents(tokenizer, a, [f.vdocs for f in a.finds if f.vdocs])
    except TaskDataError as exc:
        raise StudyArgumentError(f"--lengths {' '.join(map(str, a.lengths))}: {exc}") from None
    except FinderError as exc:  # too few documents: tasks x lengths x documents per task
        raise StudyArgumentError(
            f"--test-docs {a.test_docs} / --docs-per-task {a.docs_per_task} with {len(a.tasks)} task(s) and "
            f"{len(a.lengths)} length(s): {exc}"
        ) from None
    (a.out / "plants").mkdir(parents=True, exist_ok=True)
    atomic_write_text(settings_file, json.dumps(settings, indent=1) + "\n")
    intact = test_scores_per_document(model, data["test"])
    digest = hashlib.sha256(json.dumps(test.examples).encode()).hexdigest()[:16]
    for plant in chosen:
        out = a.out / "plants" / f"{plant.id}.json"
        before = json.loads(out.read_text()) if out.exists() else {"finds": {}}
        missing = [f for f in a.finds if f.name not in before["finds"]]
        if a.only_damaging and "damaging" in before and not before["damaging"]:
            missing = []  # measured before: no damage, so no find runs on it
        if not missing:
            print(f"{plant.id}: done before, kept ({out})", flush=True)
            continue
        started = time.time()
        row = measure_plant(plant, path, a, data, intact, missing)
        row["finds"] = {**before["finds"], **row["finds"]}
        row |= {"test_documents": len(test.examples), "test_sha256": digest}
        row["seconds"] = round(time.time() - started, 1)
        atomic_write_text(out, json.dumps(row, indent=1) + "\n")
        print(f"{plant.id}: damage {row['damage']['mean']:+.3f}, {row['seconds']:.0f} s", flush=True)
    rows = [json.loads(f.read_text()) for f in sorted((a.out / "plants").glob("*.json"))]
    names = [f.name for f in a.finds]
    summary = summarize(rows, names, a.min_damage)
    document = {"settings": settings, "summary": summary}
    atomic_write_text(a.out / "summary.json", json.dumps(document, indent=1) + "\n")
    text = table(rows, summary, settings, len(test.examples), a.min_damage)
    atomic_write_text(a.out / "table.md", text + "\n")
    print(text)
    return 0
