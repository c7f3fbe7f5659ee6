"""The stock lm_eval commands find the backend and tasks after `pip install`, and the start-up hook
stays cheap and harmless for everything else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import save_tiny

TASKS_DIR = Path(__file__).parent / "data" / "tiny_tasks"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"), "mamba", seed=3)


def _run(args, tmp_path):
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _results(out_dir: Path) -> dict:
    files = sorted(out_dir.rglob("results_*.json"))
    assert files, f"no results file under {out_dir}"
    return json.loads(files[-1].read_text())


def test_startup_hook_imports_nothing_heavy():
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True
    ).stderr
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")
    }
    assert "lm_eval_ssmsteer.lmeval._autoload" in imported, "the .pth hook is not installed"
    assert not {"torch", "lm_eval", "transformers", "numpy"} & imported


@pytest.mark.parametrize(
    "launcher",
    [["lm_eval"], [sys.executable, "-m", "lm_eval_ssmsteer", "eval"]],
    ids=["lm_eval", "python-m-lm_eval_ssmsteer-eval"],
)
def test_stock_commands_find_mamba_steered(launcher, model_dir, tmp_path):
    args = [
        *launcher,
        "--model",
        "mamba-steered",
        "--model_args",
        f"pretrained={model_dir},steer_layer=1,steer_site=delta,steer_channels=[1,2,3],steer_scale=2.0",
        "--device",
        "cpu",
        "--tasks",
        "tiny_mc",
        "--include_path",
        str(TASKS_DIR),
        "--output_path",
        str(tmp_path / "out"),
    ]
    _run(args, tmp_path)
    results = _results(tmp_path / "out")
    assert results["config"]["steering_spec"]["interventions"][0]["channels"] == [1, 2, 3]
    assert "acc,none" in results["results"]["tiny_mc"]


def test_other_backends_still_work_with_the_hook(model_dir, tmp_path):
    _run(
        [
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={model_dir}",
            "--device",
            "cpu",
            "--tasks",
            "tiny_mc",
            "--include_path",
            str(TASKS_DIR),
            "--output_path",
            str(tmp_path / "out"),
        ],
        tmp_path,
    )
    assert _results(tmp_path / "out")["config"]["model"] == "hf"


def test_accelerate_launch_finds_the_backend(model_dir, tmp_path):
    _run(
        [
            "accelerate",
            "launch",
            "--num_processes",
            "1",
            "--cpu",
            "-m",
            "lm_eval",
            "--model",
            "mamba-steered",
            "--model_args",
            f"pretrained={model_dir}",
            "--tasks",
            "tiny_mc",
            "--include_path",
            str(TASKS_DIR),
            "--output_path",
            str(tmp_path / "out"),
        ],
        tmp_path,
    )
    assert _results(tmp_path / "out")["config"]["model"] == "mamba-steered"


def test_python_api_after_import_and_package_tasks_are_indexed():
    code = (
        "import lm_eval_ssmsteer, lm_eval\n"
        "from lm_eval.api.registry import get_model\n"
        "from lm_eval.tasks import TaskManager\n"
        "from lm_eval_ssmsteer.lmeval.registration import tasks_dir\n"
        "assert get_model('mamba-steered').__name__ == 'MambaSteeredLM'\n"
        "assert get_model('hf').__name__ == 'HFLM'\n"
        "tm = TaskManager(include_defaults=False)\n"
        "assert str(tasks_dir()) in [str(p) for p in tm.include_path], tm.include_path\n"
        "print(len(tm.all_tasks))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
