"""The committed regression baseline (baselines/ssmsteer_quick.json) and its CI check on ref-mamba1.

The baseline, scripts/ci_regress.sh and the copyable workflow must name the same runs: a baseline run no
job evaluates fails CI as missing, and a job no baseline run matches is compared with nothing. The
workflow's lowest leg installs the lower bounds pyproject.toml declares for transformers and lm-eval. The
planted regression is real lm-eval output of the shipped reference model on a few documents of one task:
zeroing layer 3's mixer output takes needle-in-a-haystack retrieval from 1 to 0, and `ssmsteer regress`
must exit 1 on it (docs/report.md runs the same on the whole of ssmsteer_quick against the committed
baseline).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from lm_eval_ssmsteer.report import cli_regress
from lm_eval_ssmsteer.report.regress import write_baseline
from lm_eval_ssmsteer.report.results import load_runs
from lm_eval_ssmsteer.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "baselines" / "ssmsteer_quick.json"
SCRIPT = ROOT / "scripts" / "ci_regress.sh"
WORKFLOW = ROOT / ".github" / "workflows" / "ssmsteer-regress.yml"


def script_runs() -> list[str]:
    block = re.search(r"^RUNS=\(\n(.*?)^\)", SCRIPT.read_text(), re.S | re.M)
    assert block, "scripts/ci_regress.sh: no RUNS=( ... ) list"
    return re.findall(r'"([^"]+)"', block.group(1))


def workflow_runs() -> list[str]:
    block = re.search(r"^ +RUNS: \|\n((?: {8}\S.*\n)+)", WORKFLOW.read_text(), re.M)
    assert block, f"{WORKFLOW}: no RUNS: | block"
    return block.group(1).split()


def test_baseline_script_and_workflow_name_the_same_runs():
    runs = script_runs()
    assert runs == workflow_runs()
    by_run = {}
    for args in runs:
        kv = dict(item.split("=", 1) for item in args.split(","))
        by_run[kv["pretrained"], kv.get("steer")] = kv
    baseline = load_runs([BASELINE])
    assert {(r.model, r.spec_ref) for r in baseline} == set(by_run)
    assert len(baseline) == len(by_run) == len(runs)
    for run in baseline:
        kv = by_run[run.model, run.spec_ref]
        assert run.variant == ",".join(
            f"{k}={v}" for k, v in sorted(kv.items()) if k not in ("pretrained", "steer", "fast_scan")
        )
        if run.spec_ref is None:
            assert run.steering_spec_sha256 is None
        else:  # the spec file still says what the baseline was made with
            assert run.steering_spec_sha256 == load_spec(ROOT / run.spec_ref).sha256


def test_workflow_lowest_leg_installs_the_declared_lower_bounds():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    yaml = pytest.importorskip("yaml")
    from packaging.version import Version

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {re.match(r"[\w.-]+", d)[0]: Version(re.search(r">=([^,;]+)", d)[1]) for d in declared}
    legs = yaml.safe_load(WORKFLOW.read_text())["jobs"]["regress"]["strategy"]["matrix"]["include"]
    lowest = next(leg for leg in legs if leg["ends"] == "lowest")
    assert Version(lowest["transformers"].removeprefix("==")) == floors["transformers"]
    assert Version(lowest["lm_eval"].removeprefix("==")) == floors["lm-eval"]


def evaluate(
    model_args: dict,
    out: Path,
    task: str = "ssm_passkey",
    limit: int = 2,
    write_samples: bool = False,
    model: str = "ref-mamba1",
) -> Path:
    """``model`` on ``limit`` documents of ``task`` (by default ssm_passkey at 512 tokens),
    saved as `lm_eval --output_path --log_samples` saves (the per-document samples files only with
    ``write_samples``: then `regress` decides paired); the model arguments are the task metadata, as
    lm_eval passes them."""
    import lm_eval
    import torch
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    tracker = EvaluationTracker(output_path=str(out))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model_args = {"pretrained": model, "fast_scan": True, **model_args}
    try:
        results = lm_eval.simple_evaluate(
            model="mamba-steered",
            model_args=model_args,
            tasks=[task],
            task_manager=TaskManager(
                include_path=str(ROOT / "tasks"), include_defaults=False, metadata=model_args
            ),
            device="cpu",
            batch_size=8,
            limit=limit,
            log_samples=True,
            evaluation_tracker=tracker,
        )
    finally:
        torch.set_num_threads(threads)
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for name in results["configs"] if write_samples else ():
        tracker.save_results_samples(task_name=name, samples=samples[name])
    (found,) = out.rglob("results_*.json")
    return found


@pytest.mark.slow
def test_zeroed_mixer_on_ref_mamba1_is_a_regression(tmp_path, capsys):
    mild = evaluate({"steer": "examples/ref-mamba1-mild.json"}, tmp_path / "mild")
    # zeroing layer 0's mixer takes the passkey away (1.00 -> 0.00); zeroing any one later layer does not
    zeroed = evaluate({"steer_layer": 0, "steer_site": "mixer_out", "steer_scale": 0.0}, tmp_path / "zeroed")
    baseline = write_baseline([mild], tmp_path / "baseline.json")
    parser = argparse.ArgumentParser(prog="ssmsteer")
    cli_regress.add_parser(parser.add_subparsers())

    def regress(current: Path) -> int:
        args = parser.parse_args(["regress", "--baseline", str(baseline), "--current", str(current)])
        return args.func(args)

    assert regress(mild) == 0
    capsys.readouterr()
    assert regress(zeroed) == 1
    out = capsys.readouterr().out
    assert re.search(r"\| ssm_passkey \| 512,none \| 2 \| 1\.0000 .* \| 0\.0000 .* \| REGRESSED \|", out), out
    assert "the steering spec changed, now L0 mixer_out×0.0" in out
