"""benchmarks/gpu_matrix.py on the CPU: half-precision steering at scale 1.0 is the identity on the torch
path too (pure and hybrid models), and the matrix catches a steering path that is not (the real run is on
the GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from lm_eval_ssmsteer.mamba.hybrid_configs import HYBRID_TYPES
from lm_eval_ssmsteer.steering import apply as hooks

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def matrix(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_matrix", BENCHMARKS / "gpu_matrix.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_bf16_matrix_passes_on_cpu(matrix, tmp_path):
    out = tmp_path / "matrix.json"
    code = matrix.main(["--device", "cpu", "--shape", "tiny", "--dtypes", "bf16", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["failures"] == []
    assert code == 0
    sites_seen = {(r["arch"], r["site"], r["positions"]) for r in doc["rows"]}
    # every architecture (the three pure ones and the six hybrids), site and positions mode
    assert {r["arch"] for r in doc["rows"]} == {"mamba", "mamba2", "falcon_mamba", *HYBRID_TYPES}
    assert len(sites_seen) == 9 * 7 * 3
    assert all(r["identity_prefill"] == 0.0 and r["identity_decode"] == 0.0 for r in doc["rows"])


def test_matrix_reports_a_scale_one_that_is_not_the_identity(matrix, monkeypatch, tmp_path):
    # the rounding this project once had: a scaled tensor kept in half precision is rounded again
    monkeypatch.setattr(hooks, "_scaled", lambda t, f: t * f.to(t.dtype) * (1 + 2**-7))
    out = tmp_path / "matrix.json"
    code = matrix.main(
        ["--device", "cpu", "--shape", "tiny", "--archs", "mamba", "--dtypes", "bf16", "--out", str(out)]
    )
    failures = json.loads(out.read_text())["failures"]
    assert code == 1
    assert any("mamba/bf16/mixer_out/all: scale 1.0 prefill differs" in f for f in failures)


def test_matrix_reports_a_hybrid_whose_steering_has_no_effect(matrix, monkeypatch, tmp_path):
    # a Δ that never reaches the scan: the hybrid's rows must say that scale 1.5 changed nothing
    monkeypatch.setattr(hooks, "_steered_dt", lambda dt, *args, **kwargs: dt)
    out = tmp_path / "matrix.json"
    code = matrix.main(
        ["--device", "cpu", "--shape", "tiny", "--archs", "bamba", "--dtypes", "bf16", "--out", str(out)]
    )
    failures = json.loads(out.read_text())["failures"]
    assert code == 1
    assert any("bamba/bf16/delta/all: scale 1.5 changes no decoded logit" in f for f in failures)
    assert not any("/B/" in f or "/mixer_out/" in f for f in failures)


def test_decode_diff_compares_steps_up_to_the_first_token_that_differs(matrix):
    prompt = torch.tensor([[5, 6], [7, 8]])
    base_new = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    base_seq = torch.cat([prompt, base_new], dim=1)
    base_dec = torch.zeros(2, 4, 10)
    dec = base_dec.clone()
    # row 0 keeps its tokens; one logit moves by 0.01 at its last step
    dec[0, 3, 0] = 0.01
    # row 1 flips its greedy token at step 1 after a 0.02 move there; later steps read another token
    dec[1, 1, 2] = 0.02
    dec[1, 2:, :] = 7.0
    new = base_new.clone()
    new[1, 1:] = torch.tensor([9, 9, 9])
    diff, flipped = matrix.decode_diff(torch.cat([prompt, new], dim=1), dec, base_seq, base_dec)
    assert diff == pytest.approx(0.02)
    assert flipped
    same, flipped = matrix.decode_diff(base_seq, dec, base_seq, base_dec)
    assert same == 7.0  # with equal tokens every step is compared
    assert not flipped


def test_a_matrix_cut_short_keeps_the_rows_it_finished(matrix, monkeypatch, tmp_path):
    real = matrix.run_arch_dtype

    def stop_at_mamba2(arch, *args, **kwargs):
        if arch == "mamba2":
            raise KeyboardInterrupt  # a run stopped part-way (a time limit, a lost machine)
        return real(arch, *args, **kwargs)

    monkeypatch.setattr(matrix, "run_arch_dtype", stop_at_mamba2)
    out = tmp_path / "matrix.json"
    argv = ["--device", "cpu", "--shape", "tiny", "--dtypes", "bf16", "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        matrix.main([*argv, "--archs", "mamba", "mamba2"])
    doc = json.loads(out.read_text())
    assert doc["complete"] is False
    assert {r["arch"] for r in doc["rows"]} == {"mamba"} and len(doc["rows"]) == 7 * 3
    assert not (tmp_path / "matrix.json.tmp").exists()
    assert matrix.main([*argv, "--archs", "mamba"]) == 0
    assert json.loads(out.read_text())["complete"] is True
