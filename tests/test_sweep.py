"""`ssmsteer sweep`: the cells of a grid, their split among processes, the checks made before anything is
evaluated, and (slow) the acceptance run: 6 specs over ssmsteer_quick on ref-mamba1 on CPU, killed and
resumed, with one model load, one results folder per spec, a leaderboard, and scores equal to a separate
lm-eval run of the same spec.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lm_eval_ssmsteer.cli import main
from lm_eval_ssmsteer.mamba.arch import ArchInfo
from lm_eval_ssmsteer.spec import SpecError
from lm_eval_ssmsteer.sweep.grid import (
    UNSTEERED,
    cells_for_process,
    check_cells,
    grid_cells,
    parse_list,
    read_channels,
    spec_cells,
    sweep_cells,
)
from lm_eval_ssmsteer.sweep.processes import launched

ROOT = Path(__file__).resolve().parents[1]
REF = ArchInfo("mamba", n_layers=6, d_model=224, d_inner=448, d_state=16)  # ref-mamba1's shape
MODEL_ARGS = "pretrained=ref-mamba1,fast_scan=True"
MILD = str(ROOT / "examples" / "ref-mamba1-mild.json")


# -- cells ----------------------------------------------------------------------------------------


def test_a_grid_is_every_layer_site_and_scale_once_named_by_what_it_does():
    cells = grid_cells([1, 3], ["delta", "mixer_out"], [0.5, 2])
    assert [c.name.rsplit("_", 1)[0] for c in cells] == [
        "L1_delta_x0.5",
        "L1_delta_x2",
        "L1_mixer_out_x0.5",
        "L1_mixer_out_x2",
        "L3_delta_x0.5",
        "L3_delta_x2",
        "L3_mixer_out_x0.5",
        "L3_mixer_out_x2",
    ]
    assert all(c.name.endswith(c.sha256[:8]) for c in cells)
    (iv,) = cells[-1].spec.interventions
    assert (iv.layers, iv.site, iv.scale, iv.channels) == ((3,), "mixer_out", 2.0, "all")
    with_unsteered = sweep_cells(cells, unsteered=True)
    assert with_unsteered[0].name == UNSTEERED and with_unsteered[0].spec is None
    assert len(with_unsteered) == 9


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8, 13])
def test_every_cell_goes_to_exactly_one_process_in_shares_differing_by_at_most_one(world_size):
    cells = sweep_cells(grid_cells([0, 1, 2], ["delta", "B"], [0.5, 1.5]), unsteered=True)  # 13 cells
    shares = [cells_for_process(cells, rank, world_size) for rank in range(world_size)]
    names = [c.name for share in shares for c in share]
    assert sorted(names) == sorted(c.name for c in cells)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="rank 2 is not a process of a world of 2"):
        cells_for_process(cells, 2, 2)


def test_the_launch_is_read_from_the_launchers_variables():
    assert launched({}) == launched({"WORLD_SIZE": "1"})
    process = launched({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (process.rank, process.world_size, process.local_rank, process.first) == (3, 4, 1, False)
    with pytest.raises(ValueError, match="RANK=4, WORLD_SIZE=4"):
        launched({"RANK": "4", "WORLD_SIZE": "4"})


def test_bad_grids_fail_naming_the_option_or_the_cell(tmp_path):
    with pytest.raises(SpecError, match=r"--layers='': expected a comma-separated list"):
        parse_list("", "--layers", int)
    with pytest.raises(SpecError, match=r"--scales='1,x': every item must be a float"):
        parse_list("1,x", "--scales", float)
    with pytest.raises(SpecError, match="nothing to sweep"):
        sweep_cells([], unsteered=True)
    with pytest.raises(SpecError, match=r"--sites is empty"):
        grid_cells([1], [], [0.5])
    with pytest.raises(
        SpecError, match=r"cell L7_delta_x0.5_\w+: .*layer 7 does not exist: the model has 6 layers"
    ):
        check_cells(grid_cells([3, 7], ["delta"], [0.5]), REF)
    with pytest.raises(SpecError, match=r"channel 500 is out of range for site 'mixer_out'"):
        check_cells(grid_cells([3], ["mixer_out"], [0.5], channels=[4, 500]), REF)
    with pytest.raises(SpecError, match=r"are the same spec"):
        sweep_cells([*spec_cells([str(ROOT / "examples" / "ref-mamba1-mild.json")])] * 2, unsteered=False)
    listed = tmp_path / "channels.txt"
    listed.write_text("4, 38\n84")
    assert read_channels(str(listed)) == [4, 38, 84]
    assert read_channels(str(ROOT / "examples" / "ref-mamba1-mild.json")) == "all"
    with pytest.raises(SpecError, match="neither 'all' nor an existing file"):
        read_channels("nope.txt")


def sweep(*args: str, out: Path) -> list[str]:
    return ["sweep", "--model_args", MODEL_ARGS, "--tasks", "ssmsteer_quick", "--out", str(out), *args]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--layers", "3", "--sites", "delta"],
            "a grid needs --layers, --sites and --scales: --scales missing",
        ),
        ([], "nothing to sweep: give a grid"),
        (
            ["--layers", "", "--sites", "delta", "--scales", "2"],
            "--layers='': expected a comma-separated list",
        ),
        (["--layers", "3,6", "--sites", "delta", "--scales", "2"], "layer 6 does not exist: the model has 6"),
        (["--layers", "3", "--sites", "delta", "--scales", "-1"], "on site 'delta' is not allowed"),
        (["--specs", "nope.json"], "neither a preset"),
        (["--specs", MILD, MILD], "are the same spec (sha256 59aa93697d7a); give each spec once"),
    ],
)
def test_bad_inputs_fail_before_the_model_loads(args, message, tmp_path, monkeypatch, capsys):
    from lm_eval_ssmsteer.lmeval import evaluate

    def never(*_, **__):
        raise AssertionError("evaluation started")

    monkeypatch.setattr(evaluate, "load_backend", never)
    monkeypatch.setattr(evaluate, "task_manager", never)
    assert main(sweep(*args, out=tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def indexes(monkeypatch) -> list[bool]:
    """Each lm-eval task manager built from here on, as whether it indexed lm-eval's own tasks."""
    import lm_eval.tasks

    built: list[bool] = []

    class Recorded(lm_eval.tasks.TaskManager):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("include_defaults", True))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Recorded)
    return built


@pytest.mark.parametrize(
    ("tasks", "include_path"),
    [(["ssmsteer_quick", "ssm_passkey"], None), (["tiny_mc"], str(ROOT / "tests" / "data" / "tiny_tasks"))],
    ids=["ours", "include_path"],
)
def test_the_projects_and_included_tasks_need_no_index_of_lm_evals_own(tasks, include_path, indexes):
    from lm_eval_ssmsteer.lmeval.evaluate import EvalSettings, task_manager

    settings = EvalSettings(model_args={"pretrained": "ref-mamba1"}, tasks=tasks, include_path=include_path)
    manager = task_manager(settings)
    assert indexes == [False]  # one manager, without lm-eval's 14,000 YAML files
    assert all(manager.match_tasks([task]) == [task] for task in tasks)
    assert manager.metadata["pretrained"] == "ref-mamba1"  # the model arguments are the task metadata


def test_an_unknown_task_fails_before_the_model_loads_and_leaves_no_sweep_behind(
    tmp_path, monkeypatch, capsys, indexes
):
    from lm_eval_ssmsteer.lmeval import evaluate

    monkeypatch.setattr(evaluate, "load_backend", lambda *_: pytest.fail("the model loaded"))
    grid = ["--layers", "3", "--sites", "delta", "--scales", "2"]
    args = ["sweep", "--model_args", MODEL_ARGS, "--tasks", "ssmq_cpy", "--out", str(tmp_path / "out"), *grid]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ssmsteer sweep: error: --tasks: no such task: 'ssmq_cpy' (did you mean 'ssmq_copy'?)" in err
    assert indexes == [False, True]  # not among ours, so lm-eval's own tasks were searched too
    assert not (tmp_path / "out").exists()  # a corrected rerun starts afresh, not "another sweep's folder"


def test_steering_in_model_args_and_another_sweeps_folder_are_refused(tmp_path, monkeypatch, capsys):
    from lm_eval_ssmsteer.lmeval import evaluate

    args = ["sweep", "--model_args", f"{MODEL_ARGS},steer_scale=2", "--tasks", "x", "--out", str(tmp_path)]
    assert main([*args, "--specs", "paper-mamba-130m"]) == 2
    assert "steer_scale: the sweep's specs come from the grid" in capsys.readouterr().err
    grid = ["--layers", "3", "--sites", "delta", "--scales", "2"]
    (tmp_path / "old" / "sweep.json").parent.mkdir()
    settings = {"model_args": {"pretrained": "ref-mamba1"}, "tasks": ["ssmsteer_quick"], "limit": 8.0}
    (tmp_path / "old" / "sweep.json").write_text(json.dumps({"settings": settings, "cells": []}))
    monkeypatch.setattr(evaluate, "load_backend", lambda *_: pytest.fail("the model loaded"))
    assert main([*sweep(*grid, "--limit", "2", out=tmp_path / "old")]) == 2
    err = capsys.readouterr().err
    assert "holds a sweep with other settings" in err and "limit: 8.0 there, 2.0 now" in err


# -- the acceptance run (slow) -------------------------------------------------------------------

GRID = ["--layers", "1,3,5", "--sites", "delta", "--scales", "0.8,1.25"]  # 6 specs
EVAL = ["--limit", "2", "--device", "cpu", "--batch_size", "8"]


def kill_mid_cell(command: list[str], out: Path, log: Path) -> int:
    """Run the sweep in a subprocess and kill it (SIGKILL) once 2 cells are finished and a third has
    cached responses: a crash in the middle of a cell. Returns the finished cells at the kill."""
    from lm_eval_ssmsteer.lmeval.evaluate import cached_responses

    with log.open("w") as stream:
        proc = subprocess.Popen(command, stdout=stream, stderr=stream, cwd=ROOT)
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                finished = len(list((out / "cells").glob("*"))) if (out / "cells").is_dir() else 0
                started = list((out / "partial").glob("*")) if (out / "partial").is_dir() else []
                if finished >= 2 and any(cached_responses(out / "cache" / p.name) for p in started):
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return finished
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
    ended = f"exit {proc.returncode}"
    pytest.fail(f"the sweep ended ({ended}) before it could be killed mid-cell: {log.read_text()[-2000:]}")


def samples_of(cell: Path) -> dict[str, list[dict]]:
    return {
        path.name.removeprefix("samples_").split("_20")[0]: [
            json.loads(line) for line in path.read_text().splitlines()
        ]
        for path in sorted(cell.rglob("samples_*.jsonl"))
    }


@pytest.mark.slow
def test_sweep_of_6_specs_loads_the_model_once_writes_6_results_folders_and_resumes_after_a_kill(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "sweep"
    args = sweep(*GRID, *EVAL, out=out)
    at_kill = kill_mid_cell([sys.executable, "-m", "lm_eval_ssmsteer", *args], out, tmp_path / "killed.log")
    (half_done,) = (out / "partial").iterdir()

    from lm_eval_ssmsteer.lmeval.backend import MambaSteeredLM

    loads = []
    init = MambaSteeredLM.__init__
    monkeypatch.setattr(
        MambaSteeredLM, "__init__", lambda self, *a, **k: loads.append(1) or init(self, *a, **k)
    )
    assert main(args) == 0
    err = capsys.readouterr().err
    assert len(loads) == 1, "the rerun loaded the model more than once"
    assert f"7 cells, {at_kill} finished before, {7 - at_kill} to evaluate" in err
    assert f"{half_done.name}: resuming an interrupted evaluation" in err

    cells = sorted((out / "cells").iterdir())
    steered = [c for c in cells if c.name != UNSTEERED]
    assert len(steered) == 6 and len(cells) == 7
    for cell in cells:
        assert len(list(cell.rglob("results_*.json"))) == 1, f"{cell.name}: one results file"
        samples = samples_of(cell)
        assert len(samples) == 7  # the tasks of ssmsteer_quick
        for task, lines in samples.items():
            assert sorted(s["doc_id"] for s in lines) == [0, 1], f"{cell.name} {task}: each document once"
    assert not list((out / "partial").iterdir()) and not list((out / "cache").glob("*.db"))
    leaderboard = (out / "report" / "leaderboard.md").read_text()
    assert leaderboard.count("| ref-mamba1 | mamba-steered |") == 7
    assert "## Paired differences vs the baseline ref-mamba1 [mamba-steered] · unsteered" in leaderboard
    # 7 task columns (2 documents reach only the 512 length of the two length tasks) and the average
    assert len((out / "report" / "paired.csv").read_text().splitlines()) == 1 + 6 * (7 + 1)

    # the resumed cell scores every document as a separate lm-eval run of its spec does
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable, sanitize_list

    results = json.loads(next((out / "cells" / half_done.name).rglob("results_*.json")).read_text())
    assert results["config"]["model_args"]["steer"] == str(out / "specs" / f"{half_done.name}.json")
    model_args = {
        "pretrained": "ref-mamba1",
        "fast_scan": True,
        "steer": str(out / "specs" / f"{half_done.name}.json"),
    }
    separate = lm_eval.simple_evaluate(
        model="mamba-steered",
        model_args=model_args,
        tasks=["ssmsteer_quick"],
        device="cpu",
        batch_size=8,
        limit=2,
        log_samples=True,
        # as simple_evaluate makes it (the model arguments are the task metadata), less lm-eval's own tasks
        task_manager=TaskManager(include_defaults=False, metadata=model_args),
    )
    resumed = samples_of(out / "cells" / half_done.name)
    for task, lines in separate["samples"].items():
        keys = ("doc_id", "doc_hash", "prompt_hash", "target_hash", "filtered_resps", *lines[0]["metrics"])
        mine = [{k: s[k] for k in keys} for s in sorted(resumed[task], key=lambda s: s["doc_id"])]
        saved = [
            {**s, "filtered_resps": sanitize_list(s["filtered_resps"])} for s in lines
        ]  # as lm-eval saves
        theirs = [
            {k: json.loads(json.dumps(s[k], default=handle_non_serializable)) for k in keys} for s in saved
        ]
        assert mine == theirs, task


@pytest.mark.slow
def test_a_launch_of_two_processes_splits_the_cells_and_the_first_writes_the_leaderboard(tmp_path):
    """torchrun on the CPU (gloo): the processes evaluate different cells, each whole, and meet once."""
    out = tmp_path / "sweep"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    grid = ["--layers", "3", "--sites", "delta", "--scales", "0.8,1.25"]
    args = sweep(*grid, "--limit", "1", "--device", "cpu", "--batch_size", "8", out=out)
    done = subprocess.run(
        [*launch, "-m", "lm_eval_ssmsteer", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    log = done.stdout + done.stderr
    said = [line for line in log.splitlines() if "ssmsteer sweep" in line or "Error" in line]
    assert done.returncode == 0, "\n".join(said)[-3000:]
    assert "process 0 of 2: 2 cells, 0 finished before, 2 to evaluate" in log
    assert "process 1 of 2: 1 cells, 0 finished before, 1 to evaluate" in log
    assert log.count("loaded ref-mamba1 once") == 2  # one load per process
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert len(cells) == 3 and UNSTEERED in cells
    for cell in cells:
        assert len(list((out / "cells" / cell).rglob("results_*.json"))) == 1
    leaderboard = (out / "report" / "leaderboard.md").read_text()
    assert leaderboard.count("| ref-mamba1 | mamba-steered |") == 3
