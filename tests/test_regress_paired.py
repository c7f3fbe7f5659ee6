"""Paired regression checks on real lm-eval outputs of the shipped reference model ref-mamba1-v1 (the first
ref-mamba1: its partial multiple-choice scores are what a paired test needs; today's ref-mamba1 scores
1.00 on this task).

Two runs of the first 40 documents of ssm_mqar_mc (multiple-choice recall: four queries a document, its
score the fraction answered right), with samples logged: the model as it is (steered by the identity, Δ ×
1.0 at layer 0, which is bitwise the unsteered model), and with a small regression planted, Δ × 0.5 at
layer 0. The planted spec moves 21 of the 40 documents, nearly all by one query of four: 16 down and 5
up, −0.094 in all (measured 2026-12-02, also by `ssmsteer sweep ... --tasks ssm_mqar_mc --limit 40
--layers 0 --sites delta --scales 0.5`). The baseline is frozen from the first run (with its per-document
scores). That run, read back as the current one, must stay "unchanged" (that a rerun equals a frozen
baseline, scripts/ci_regress.sh checks in CI on the committed one); the planted regression must be
REGRESSED by the paired test (the exact sign test, p = 0.027: the scores are not 0/1, so not McNemar's) and
is missed by the stderr rule (a drop of 0.094 within its tolerance of 1.96·√(se² + se²) ≈ 0.115:
inconclusive, exit 0).
"""

from __future__ import annotations

import argparse
import math
import re

import pytest
from test_regress_ref import evaluate

from lm_eval_ssmsteer.report import cli_regress
from lm_eval_ssmsteer.report.regress import write_baseline

pytestmark = pytest.mark.slow

TASK, DOCUMENTS, MODEL = "ssm_mqar_mc", 40, "ref-mamba1-v1"
IDENTITY = {"steer_layer": 0, "steer_site": "delta", "steer_scale": 1.0}
PLANTED = {"steer_layer": 0, "steer_site": "delta", "steer_scale": 0.5}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    first = evaluate(IDENTITY, root / "first", TASK, DOCUMENTS, write_samples=True, model=MODEL)
    return {
        "baseline": write_baseline([first], root / "baseline.json"),
        "first": first,
        "planted": evaluate(PLANTED, root / "planted", TASK, DOCUMENTS, write_samples=True, model=MODEL),
    }


def regress(capsys, *args: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="ssmsteer")
    cli_regress.add_parser(parser.add_subparsers())
    parsed = parser.parse_args(["regress", *args])
    status = parsed.func(parsed)
    return status, capsys.readouterr().out


def test_the_baselines_own_run_stays_unchanged(runs, capsys):
    status, out = regress(
        capsys, "--baseline", str(runs["baseline"]), "--current", str(runs["first"]), "--all"
    )
    assert status == 0
    unchanged = r"\| \+0\.0000 \| — \| sign p=1\.0000, 0↑ 0↓, 95% CI \[\+0\.0000, \+0\.0000\] \| unchanged \|"
    assert re.search(r"\| ssm_mqar_mc \| acc,none \| 40 \| .* " + unchanged, out), out
    assert "1 metrics compared (1 on the same documents, paired): 0 regressed" in out


def test_a_planted_small_regression_is_flagged_paired_and_missed_by_the_stderr_rule(runs, capsys):
    args = ("--baseline", str(runs["baseline"]), "--current", str(runs["planted"]))
    status, out = regress(capsys, *args)
    assert status == 1, out
    paired = r"\| — \| sign p=(\S+), (\d+)↑ (\d+)↓, 95% CI \[(\S+), (\S+)\] \| REGRESSED \|"
    row = re.search(r"\| ssm_mqar_mc \| acc,none \| 40 \| (.*) \| (.*) \| (\S+) " + paired, out)
    assert row, out
    up, down = int(row[5]), int(row[6])
    assert (up, down) == (5, 16)
    # the exact two-sided sign test, summed here from binomial coefficients
    tail = sum(math.comb(up + down, k) for k in range(min(up, down) + 1)) / 2 ** (up + down)
    assert float(row[4]) == pytest.approx(2 * tail, abs=1e-4)
    assert float(row[4]) < 0.05
    assert row[3] == "-0.0938" and float(row[8]) < 0  # the paired interval lies below 0

    status, out = regress(capsys, *args, "--no-paired")
    assert status == 0, out
    unpaired = re.search(
        r"\| ssm_mqar_mc \| acc,none \| 40 \| .* \| -0\.0938 \| (\S+) \| — \| inconclusive: n=40 \|", out
    )
    assert unpaired, out
    assert float(unpaired[1]) > 0.0938  # the stderr tolerance hides the drop
