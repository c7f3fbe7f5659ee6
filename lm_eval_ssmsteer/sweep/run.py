"""Running a sweep: every cell this process owns, on one model load, then the leaderboard.

Cells already finished in the folder are skipped; a cell a killed run left half-done is evaluated again
with the responses lm-eval had cached replayed (``folder``). Under ``accelerate launch`` each process takes
its share of the cells (``grid.cells_for_process``, ``processes``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_eval_ssmsteer.lmeval.evaluate import EvalSettings
from lm_eval_ssmsteer.sweep.folder import SweepFolder
from lm_eval_ssmsteer.sweep.grid import UNSTEERED, Cell, cells_for_process
from lm_eval_ssmsteer.sweep.processes import Process, barrier, leave

# settings that do not change what a cell scores: a rerun may change them
_NOT_COMPARED = ("device", "max_batch_size")


def recorded_settings(settings: EvalSettings) -> dict[str, Any]:
    """What a rerun must share with the sweep it resumes (sweep.json)."""
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in _NOT_COMPARED}


def cell_model_args(settings: EvalSettings, folder: SweepFolder, cell: Cell) -> dict[str, Any]:
    """The model arguments a separate ``lm_eval`` run of the cell would have had."""
    if cell.spec is None:
        return dict(settings.model_args)
    return {**settings.model_args, "steer": str(folder.spec_file(cell))}


def say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"ssmsteer sweep: {message}", file=sys.stderr)


def run_sweep(settings: EvalSettings, cells: Sequence[Cell], out: Path, process: Process) -> int:
    """Evaluate this process's unfinished cells into ``out``; the first process then writes the
    leaderboard when every cell is finished. Returns an exit status."""
    from tqdm import tqdm

    from lm_eval_ssmsteer.lmeval.evaluate import cached_responses, evaluate_into, load_backend, task_manager

    manager = task_manager(settings)  # an unknown task fails here, before the folder is written
    folder = SweepFolder(out)
    # every process checks the folder before any writes into it (another sweep's folder fails them all
    # alike); then the first records the sweep, before any process starts a cell
    folder.prepare(recorded_settings(settings), cells, write=False)
    barrier(process)
    if process.first:
        folder.prepare(recorded_settings(settings), cells, write=True)
    barrier(process)
    mine = cells_for_process(cells, process.rank, process.world_size)
    todo = [cell for cell in mine if not folder.is_finished(cell)]
    share = f"process {process.rank} of {process.world_size}: " if process.world_size > 1 else ""
    say(f"{share}{len(mine)} cells, {len(mine) - len(todo)} finished before, {len(todo)} to evaluate")
    if todo:
        started = time.perf_counter()
        lm = load_backend(settings)
        say(f"loaded {settings.model_args['pretrained']} once ({time.perf_counter() - started:.1f} s)")
        with tqdm(total=len(mine), initial=len(mine) - len(todo), desc="sweep cells", unit="cell") as bar:
            for cell in todo:
                kept = cached_responses(folder.cache(cell))
                if kept or folder.partial(cell).exists():
                    say(f"{cell.name}: resuming an interrupted evaluation, {kept} responses kept")
                started = time.perf_counter()
                evaluate_into(
                    lm,
                    cell.spec,
                    cell_model_args(settings, folder, cell),
                    settings,
                    manager,
                    folder.start(cell),
                    folder.cache(cell),
                )
                folder.finish(cell)
                say(f"{cell.name}: evaluated in {time.perf_counter() - started:.1f} s")
                bar.update()
    leave(process)
    if not process.first:
        return 0
    unfinished = [cell.name for cell in cells if not folder.is_finished(cell)]
    if unfinished:
        say(f"not finished: {', '.join(unfinished)}; run the same command again to finish them")
        return 1
    return write_leaderboard(folder, cells)


def write_leaderboard(folder: SweepFolder, cells: Sequence[Cell]) -> int:
    """The report of the sweep's cells, paired with the unsteered cell when there is one."""
    from lm_eval_ssmsteer.report.cli import make_report

    baseline = next((folder.finished(c) for c in cells if c.name == UNSTEERED), None)
    status = make_report(
        [folder.finished(cell) for cell in cells],
        folder.report,
        title=f"sweep {folder.root.name}",
        baseline=baseline,
    )
    if status == 0:
        say(f"leaderboard: {folder.report / 'leaderboard.md'}")
    return status
