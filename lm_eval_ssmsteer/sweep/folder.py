"""A sweep's folder, which is also its state: a rerun reads it to skip finished cells and to finish
half-done ones.

    OUT/sweep.json              the settings every cell shares, and the cells
    OUT/specs/<cell>.json       each cell's spec (its results name it as steer=)
    OUT/cells/<cell>/           one lm-eval --output_path per cell: <model>/results_<date>.json, samples
    OUT/partial/<cell>/         a cell being evaluated; moved to cells/<cell>/ once all of it is written
    OUT/cache/<cell>_rank0.db   lm-eval's response cache (use_cache) of the cell being evaluated
    OUT/report/                 the leaderboard (ssmsteer report)

A cell is finished when its folder exists: it appears in one rename, after lm-eval wrote its results and
samples, so a killed run leaves at most a ``partial/`` folder (deleted by the rerun, which evaluates the
cell again) and the responses lm-eval had cached (replayed by the rerun, which computes only the rest).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_eval_ssmsteer.files import atomic_write_text
from lm_eval_ssmsteer.spec import SpecError
from lm_eval_ssmsteer.sweep.grid import Cell

SETTINGS = "sweep.json"
FORMAT = "ssmsteer-sweep/1"


class SweepFolder:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.cells = self.root / "cells"
        self.report = self.root / "report"

    def spec_file(self, cell: Cell) -> Path:
        return self.root / "specs" / f"{cell.name}.json"

    def finished(self, cell: Cell) -> Path:
        return self.cells / cell.name

    def partial(self, cell: Cell) -> Path:
        return self.root / "partial" / cell.name

    def cache(self, cell: Cell) -> Path:
        """The stem lm-eval's use_cache takes; it appends ``_rank<N>.db``."""
        return self.root / "cache" / cell.name

    def is_finished(self, cell: Cell) -> bool:
        return self.finished(cell).is_dir()

    def cached_files(self, cell: Cell) -> list[Path]:
        cache = self.cache(cell)
        return sorted(cache.parent.glob(f"{cache.name}_rank*.db")) if cache.parent.is_dir() else []

    def prepare(self, settings: dict[str, Any], cells: Sequence[Cell], *, write: bool) -> None:
        """Check the folder holds this sweep (or nothing yet); with ``write`` (one process of a launch),
        record the settings, the cells and their specs. SpecError when it holds a sweep of other settings:
        its cells would not compare with new ones."""
        path = self.root / SETTINGS
        if path.is_file():
            recorded = json.loads(path.read_text())
            differ = {
                k: (recorded.get("settings", {}).get(k), v)
                for k, v in settings.items()
                if recorded.get("settings", {}).get(k) != v
            }
            if differ:
                said = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in differ.items())
                raise SpecError(
                    f"{self.root} holds a sweep with other settings ({said}); its cells would not compare "
                    "with new ones: use another --out, or delete the folder to start again"
                )
            known = {c["name"] for c in recorded.get("cells", [])}
        elif self.root.exists() and any(self.root.iterdir()):
            raise SpecError(
                f"--out {self.root}: the folder exists and holds no sweep ({SETTINGS}); give a new one"
            )
        else:
            known = set()
        if not write:
            return
        for cell in cells:
            if cell.spec is not None:
                self.spec_file(cell).parent.mkdir(parents=True, exist_ok=True)
                if not self.spec_file(cell).is_file():
                    cell.spec.save(self.spec_file(cell))
        listed = [{"name": c.name, "steering_spec_sha256": c.sha256} for c in cells]
        if path.is_file():
            old = json.loads(path.read_text()).get("cells", [])
            listed = old + [c for c in listed if c["name"] not in known]
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            path, json.dumps({"format": FORMAT, "settings": settings, "cells": listed}, indent=1) + "\n"
        )

    def start(self, cell: Cell) -> Path:
        """A clean folder to evaluate ``cell`` into (what a killed run left there is deleted)."""
        partial = self.partial(cell)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        return partial

    def finish(self, cell: Cell) -> Path:
        """The evaluated cell in place, in one rename; its cached responses are no longer needed."""
        self.cells.mkdir(exist_ok=True)
        self.partial(cell).rename(self.finished(cell))
        for db in self.cached_files(cell):
            db.unlink()
        return self.finished(cell)
