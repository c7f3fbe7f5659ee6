"""Through the stock `lm_eval` command, a mistake in a mamba-steered run is one line naming the field and
the value (exit 2, no traceback); a correct run still works and says its defaults once; `--model hf`
keeps lm-eval's own errors. Then the same plumbing in-process: which errors become one line, which log
lines are dropped.

What counts as "our lines" on stderr: every line except lm-eval's own log records (`2026-12-02:07:48:42
INFO  [...]`, which lm-eval's logging writes to stderr before the mistake is found). At most 3 may be
left, and none may be a traceback.

The runs that get as far as lm-eval's task index (15-30 s each on a 2-core machine) start together with
the first subprocess test; the model_args mistakes fail before that index, in about a second each.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from lm_eval_ssmsteer.loading import shipped_models

BIN = Path(sys.executable).parent
LM_EVAL = str(BIN / "lm_eval")
LM_EVAL_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d:\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) +\[")
TINY = "pretrained=tiny-random-mamba"
STEER = "steer_layer=1,steer_site=delta"


def _our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not LM_EVAL_LOG_RECORD.match(line)]


def _args(model: str, model_args: str, tasks: str = "ssm_copy", *extra: str) -> list[str]:
    return ["--model", model, "--model_args", model_args, "--tasks", tasks, "--device", "cpu", *extra]


def _assert_one_line_error(proc: subprocess.CompletedProcess, *named: str) -> None:
    ours = _our_lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(ours) <= 3 and not any("Traceback" in line for line in ours), proc.stderr[-3000:]
    error = [line for line in ours if line.startswith("lm_eval: error: ")]
    assert len(error) == 1, ours
    for text in named:
        assert text in error[0], error[0]


SLOW_RUNS = {
    "unknown task": [LM_EVAL, *_args("mamba-steered", TINY, "ssm_copyy")],
    "correct run": [
        LM_EVAL,
        *_args("mamba-steered", TINY, "ssm_copy,ssm_phonebook", "--limit", "1", "--output_path", "out"),
    ],
    "hf": [
        LM_EVAL,
        *_args("hf", f"pretrained={shipped_models()['tiny-random-mamba']},dtype=float33"),
    ],
}


@pytest.fixture(scope="module")
def slow_runs(tmp_path_factory):
    """Starts the slow runs at once (output to files, so that no pipe fills up while another is read)."""
    started = {}
    for name, args in SLOW_RUNS.items():
        folder = tmp_path_factory.mktemp(name.replace(" ", "_"))
        out, err = open(folder / "stdout", "w"), open(folder / "stderr", "w")  # noqa: SIM115
        started[name] = (subprocess.Popen(args, stdout=out, stderr=err, cwd=folder), folder, out, err)
    yield started
    for proc, _, out, err in started.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        out.close()
        err.close()


def _finished(slow_runs, name: str) -> tuple[subprocess.CompletedProcess, Path]:
    proc, folder, _, _ = slow_runs[name]
    proc.wait(timeout=600)
    stdout, stderr = (folder / "stdout").read_text(), (folder / "stderr").read_text()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), folder


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)


@pytest.mark.parametrize(
    ("model_args", "named"),
    [
        ("pretrained={missing}", ("pretrained=", "does-not-exist'", "no such folder", "hub id")),
        (f"{TINY},dtype=float33", ("dtype='float33'", "allowed: auto, float32")),
        (
            f"{TINY},{STEER},steer_scale=2,steer_positons=all",
            ("steer_positons='all'", "did you mean 'steer_positions'"),
        ),
        (f"{TINY},{STEER},steer_sclae=2", ("steer_sclae=2", "did you mean 'steer_scale'")),
    ],
    ids=["missing-folder", "dtype", "steer_positons", "steer_sclae"],
)
def test_model_args_mistake_is_one_line(model_args, named, tmp_path, slow_runs):
    model_args = model_args.format(missing=tmp_path / "x" / "does-not-exist")
    _assert_one_line_error(_run([LM_EVAL, *_args("mamba-steered", model_args)], tmp_path), *named)


@pytest.mark.parametrize(
    "launcher",
    [[sys.executable, "-m", "lm_eval"], [str(BIN / "ssmsteer"), "eval"]],
    ids=["python-m-lm_eval", "ssmsteer-eval"],
)
def test_other_entry_points_give_the_same_line(launcher, tmp_path, slow_runs):
    args = _args("mamba-steered", f"{TINY},steer=no-such-spec.json")
    _assert_one_line_error(_run([*launcher, *args], tmp_path), "steer='no-such-spec.json'", "preset")


def test_unknown_task_near_ours_is_one_line_with_a_suggestion(slow_runs):
    proc, _ = _finished(slow_runs, "unknown task")
    _assert_one_line_error(proc, "--tasks", "'ssm_copyy'", "did you mean 'ssm_copy'")


def test_correct_run_says_its_defaults_once_and_hides_expected_cpu_warnings(slow_runs):
    proc, folder = _finished(slow_runs, "correct run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((folder / "out").rglob("results_*.json")).read_text())
    assert {"ssm_copy", "ssm_phonebook"} <= results["results"].keys()
    assert "Custom kwargs can be passed to `--metadata`" not in proc.stderr
    assert proc.stderr.count("ssmsteer tasks: settings that neither --metadata") == 1
    assert "falling back to its reference PyTorch implementation" not in proc.stderr


def test_hf_errors_are_lm_evals_own(slow_runs):
    proc, _ = _finished(slow_runs, "hf")
    assert proc.returncode not in (0, 2), proc.stderr[-3000:]
    assert "Traceback" in proc.stderr
    assert "AttributeError: module 'torch' has no attribute 'float33'" in proc.stderr
    assert "lm_eval: error:" not in proc.stderr


def _kept(logger: logging.Logger, message: str) -> bool:
    return bool(
        logger.filter(logging.LogRecord(logger.name, logging.WARNING, __file__, 0, message, None, None))
    )


def test_only_the_plugins_errors_and_unknown_tasks_of_its_runs_become_one_line():
    from lm_eval_ssmsteer.lmeval.cli_errors import one_line
    from lm_eval_ssmsteer.mamba.arch import UnsupportedModelError
    from lm_eval_ssmsteer.spec import SpecError
    from lm_eval_ssmsteer.taskdata import TaskDataError

    for error in (SpecError("x"), TaskDataError("x"), UnsupportedModelError("x")):
        assert one_line(error, mamba_steered_run=False) == "x"
    not_found = ValueError("Tasks not found: ssm_copyy, hellaswg")
    assert one_line(not_found, mamba_steered_run=True) == (
        "--tasks: no such task: 'ssm_copyy' (did you mean 'ssm_copy'?), 'hellaswg'; "
        "`lm_eval ls tasks` lists the tasks"
    )
    assert one_line(not_found, mamba_steered_run=False) is None
    assert one_line(AttributeError("module 'torch' has no attribute 'float33'"), True) is None


def test_other_backends_model_args_are_not_checked(capsys):
    from lm_eval_ssmsteer.lmeval.cli_errors import run

    executed = []
    run(executed.append, Namespace(model="hf", model_args={"dtype": "float33"}))
    assert len(executed) == 1
    with pytest.raises(SystemExit) as exited:
        run(executed.append, Namespace(model="mamba-steered", model_args={"dtype": "float33"}))
    assert exited.value.code == 2 and len(executed) == 1
    assert capsys.readouterr().err.startswith("lm_eval: error: dtype='float33'")


def test_exactly_the_cpu_kernel_fallback_lines_are_dropped():
    import inspect

    import transformers.integrations.hub_kernels as hub_kernels

    from lm_eval_ssmsteer.log_filters import KERNEL_FALLBACK_LOGGER, drop_cpu_kernel_fallback

    assert "is falling back to its reference PyTorch implementation because " in inspect.getsource(
        hub_kernels
    )
    drop_cpu_kernel_fallback()
    logger = logging.getLogger(KERNEL_FALLBACK_LOGGER)
    line = (
        "`{}` is falling back to its reference PyTorch implementation because `{}` is not installed. This "
        "is correct but much slower; install `{}` for the optimized kernel."
    )
    for function, package in [
        ("selective_scan_fn", "mamba_ssm"),
        ("selective_state_update", "mamba_ssm"),
        ("causal_conv1d_fn", "causal_conv1d"),
        ("causal_conv1d_update", "causal_conv1d"),
    ]:
        assert not _kept(logger, line.format(function, package, package))
    assert _kept(logger, line.format("flash_attn_varlen_func", "flash_attn", "flash_attn"))
    assert _kept(logger, "Some weights of MambaForCausalLM were not initialized from the checkpoint")


def test_lm_evals_metadata_hint_is_dropped_for_our_tasks_only():
    import inspect

    import lm_eval.api.task

    from lm_eval_ssmsteer.lmeval import registration
    from lm_eval_ssmsteer.log_filters import METADATA_HINT_LOGGER

    assert ": Custom kwargs can be passed to `--metadata`" in inspect.getsource(lm_eval.api.task)
    registration.register_tasks()
    logger = logging.getLogger(METADATA_HINT_LOGGER)
    hint = (
        "{}: Custom kwargs can be passed to `--metadata` in console (as json string) or to the TaskManager."
    )
    assert not _kept(logger, hint.format("ssm_passkey"))
    assert _kept(logger, hint.format("niah_single_1"))
