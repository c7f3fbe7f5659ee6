"""The mamba-steered backend on hybrid models (local folders of tiny random configs): parity with `hf`
without a spec, a steered run, and a spec on a layer without Mamba refused before evaluation."""

from __future__ import annotations

from pathlib import Path

import lm_eval
import pytest
from lm_eval.tasks import TaskManager
from tiny import HYBRIDS, MAMBA_LAYERS, hybrid_config, save_tiny

from lm_eval_ssmsteer.lmeval.backend import MambaSteeredLM
from lm_eval_ssmsteer.spec import SpecError

TASKS_DIR = Path(__file__).parent / "data" / "tiny_tasks"


@pytest.fixture(scope="module")
def task_manager():
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@pytest.fixture(scope="module", params=HYBRIDS)
def hybrid(request, tmp_path_factory):
    """(model_type, folder of a tiny random model of it)"""
    return request.param, save_tiny(tmp_path_factory.mktemp(request.param), request.param, seed=2)


def _evaluate(model, model_args, task_manager):
    return lm_eval.simple_evaluate(
        model=model,
        model_args={"device": "cpu", **model_args},
        tasks=["tiny_mc", "tiny_gen"],
        task_manager=task_manager,
        batch_size=4,
        log_samples=True,
    )


def _responses(results):
    return {task: [s["resps"] for s in samples] for task, samples in results["samples"].items()}


def test_unsteered_backend_equals_stock_hf_and_a_spec_changes_it(hybrid, task_manager):
    arch, model_dir = hybrid
    ours = _evaluate("mamba-steered", {"pretrained": str(model_dir)}, task_manager)
    stock = _evaluate("hf", {"pretrained": str(model_dir)}, task_manager)
    assert ours["results"] == stock["results"]
    assert _responses(ours) == _responses(stock)
    assert ours["config"]["architecture"] == arch

    steered = _evaluate(
        "mamba-steered",
        {"pretrained": str(model_dir), "steer_layer": "all", "steer_site": "delta", "steer_scale": 4.0},
        task_manager,
    )
    assert _responses(steered)["tiny_mc"] != _responses(ours)["tiny_mc"]


def test_a_spec_on_an_attention_layer_fails_before_evaluation(hybrid):
    arch, model_dir = hybrid
    mamba = MAMBA_LAYERS[arch]
    n_layers = hybrid_config(arch).num_hidden_layers
    plain = next((i for i in range(n_layers) if i not in mamba), None)
    if plain is None:  # Falcon-H1 and Zamba2: a Mamba mixer in every layer; one past the last layer
        message = f"layer {n_layers} does not exist: the model has {n_layers} layers"
        with pytest.raises(SpecError, match=message):
            MambaSteeredLM(
                pretrained=str(model_dir), device="cpu", steer_layer=n_layers, steer_site="B", steer_scale=2.0
            )
        return
    listed = ", ".join(map(str, mamba))
    with pytest.raises(SpecError, match=rf"layer {plain} of \w+ has no Mamba mixer.*are {listed}$"):
        MambaSteeredLM(
            pretrained=str(model_dir), device="cpu", steer_layer=plain, steer_site="B", steer_scale=2.0
        )


def test_spec_describe_prints_layer_types_and_site_widths(hybrid, capsys):
    from lm_eval_ssmsteer.cli import main

    arch, model_dir = hybrid
    assert main(["spec", "describe", "--model", str(model_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    mamba = MAMBA_LAYERS[arch]
    assert lines[0].endswith(f"Mamba layers {', '.join(map(str, mamba))}")
    n_layers = hybrid_config(arch).num_hidden_layers
    assert len(lines) == 1 + n_layers
    for i, line in enumerate(lines[1:]):
        assert line.startswith(f"layer {i}: ")
        if i in mamba:  # d_model 32; Jamba: Mamba-1, d_inner 64, d_state 8; the others 8 heads, 2 groups of 8
            widths = "delta 64, B 8, C 8" if arch == "jamba" else "delta 8, B 16, C 16"
            assert f"mixer_out 32, residual 32, {widths}, ssm_out 64, gate 64" in line
        else:
            assert "attention" in line or "mlp" in line
            assert line.endswith("no Mamba mixer: residual 32 only")
