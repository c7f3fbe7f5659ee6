"""The mamba-steered lm-eval backend: parity with `hf`, provenance in results, early errors."""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval
import pytest
from lm_eval.tasks import TaskManager
from tiny import ARCHITECTURES, save_tiny

from lm_eval_ssmsteer.lmeval.backend import MambaSteeredLM
from lm_eval_ssmsteer.mamba.arch import UnsupportedModelError
from lm_eval_ssmsteer.spec import SpecError

TASKS_DIR = Path(__file__).parent / "data" / "tiny_tasks"


@pytest.fixture(scope="module")
def task_manager():
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model_dir(request, tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp(request.param), request.param, seed=2)


def _evaluate(model, model_args, task_manager, batch_size=4):
    return lm_eval.simple_evaluate(
        model=model,
        model_args={"device": "cpu", **model_args},
        tasks=["tiny_mc", "tiny_gen"],
        task_manager=task_manager,
        batch_size=batch_size,
        log_samples=True,
    )


def _responses(results):
    return {task: [s["resps"] for s in samples] for task, samples in results["samples"].items()}


def test_unsteered_backend_equals_stock_hf(model_dir, task_manager):
    ours = _evaluate("mamba-steered", {"pretrained": str(model_dir)}, task_manager)
    stock = _evaluate("hf", {"pretrained": str(model_dir)}, task_manager)
    assert ours["results"] == stock["results"]
    assert _responses(ours) == _responses(stock)
    assert ours["config"]["steering_spec"] is None


def test_steered_run_changes_outputs_and_records_its_spec(model_dir, task_manager, tmp_path):
    spec = {
        "version": 1,
        "interventions": [{"layer": "all", "site": "delta", "channels": "all", "scale": 4.0}],
        "provenance": {"note": "test"},
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    steered = _evaluate("mamba-steered", {"pretrained": str(model_dir), "steer": str(path)}, task_manager)
    plain = _evaluate("mamba-steered", {"pretrained": str(model_dir)}, task_manager)
    assert _responses(steered)["tiny_mc"] != _responses(plain)["tiny_mc"]
    cfg = steered["config"]
    assert cfg["steering_spec"]["interventions"][0]["scale"] == 4.0
    assert cfg["steering_spec"]["provenance"] == {"note": "test"}
    assert len(cfg["steering_spec_sha256"]) == 64
    assert cfg["model_fingerprint"]["n_layers"] == 3
    assert cfg["world_size"] == 1


def test_batch_size_does_not_change_steered_results(model_dir, task_manager):
    args = {"pretrained": str(model_dir), "steer_layer": 1, "steer_site": "B", "steer_scale": 3.0}
    one = _evaluate("mamba-steered", args, task_manager, batch_size=1)
    many = _evaluate("mamba-steered", args, task_manager, batch_size=5)
    assert one["results"]["tiny_gen"] == many["results"]["tiny_gen"]
    assert [s["resps"] for s in one["samples"]["tiny_gen"]] == [
        s["resps"] for s in many["samples"]["tiny_gen"]
    ]
    for a, b in zip(one["samples"]["tiny_mc"], many["samples"]["tiny_mc"], strict=True):
        for (la, _), (lb, _) in zip([r[0] for r in a["resps"]], [r[0] for r in b["resps"]], strict=True):
            assert abs(la - lb) < 1e-4


def test_shorthand_and_spec_file_are_the_same_steering(model_dir):
    a = MambaSteeredLM(
        pretrained=str(model_dir),
        device="cpu",
        steer_layer="[0, 2]",
        steer_site="mixer_out",
        steer_channels="3;5",
        steer_scale="2.0",
        steer_positions="prompt",
    )
    b = MambaSteeredLM(
        pretrained=str(model_dir),
        device="cpu",
        steer=json.dumps(
            {
                "version": 1,
                "interventions": [
                    {
                        "layer": [0, 2],
                        "site": "mixer_out",
                        "channels": [3, 5],
                        "scale": 2.0,
                        "positions": "prompt",
                    }
                ],
            }
        ),
    )
    assert a.steering_spec.sha256 == b.steering_spec.sha256


@pytest.mark.parametrize(
    "args, message",
    [
        (
            {"steer_layer": 7, "steer_site": "delta", "steer_scale": 2.0},
            r"layer 7 does not exist: the model has 3",
        ),
        ({"steer_layer": 0, "steer_site": "conv", "steer_scale": 2.0}, r"site='conv' is not a known site"),
        (
            {"steer_layer": 0, "steer_site": "B", "steer_channels": [99], "steer_scale": 2.0},
            r"channel 99 is out",
        ),
        ({"steer_layer": 0, "steer_site": "B", "steer_scale": float("nan")}, r"finite number, got nan"),
        ({"steer": "paper-mamba-130m"}, r"made for state-spaces/mamba-130m-hf"),
        ({"steer": "{oops"}, r"malformed JSON"),
        ({"steer_layer": 0}, r"needs \['steer_site', 'steer_scale'\]"),
    ],
)
def test_bad_steering_fails_at_construction(model_dir, args, message):
    with pytest.raises(SpecError, match=message):
        MambaSteeredLM(pretrained=str(model_dir), device="cpu", **args)


def test_non_mamba_model_fails_before_loading_weights(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50).save_pretrained(tmp_path)
    # only a config: reaching weight loading would fail differently
    with pytest.raises(UnsupportedModelError, match="model_type 'gpt2'.*supported: MambaForCausalLM"):
        MambaSteeredLM(pretrained=str(tmp_path), device="cpu")


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
@pytest.mark.parametrize("steer_args", [{}, {"steer_layer": 1, "steer_site": "delta", "steer_scale": 2.0}])
def test_fast_scan_matches_transformers_scan(tmp_path, task_manager, steer_args, arch):
    path = save_tiny(tmp_path / "m", arch, seed=2)
    fast = _evaluate(
        "mamba-steered", {"pretrained": str(path), "fast_scan": True, **steer_args}, task_manager
    )
    loop = _evaluate("mamba-steered", {"pretrained": str(path), **steer_args}, task_manager)
    assert fast["config"]["fast_scan"] is True
    assert [s["resps"] for s in fast["samples"]["tiny_gen"]] == [
        s["resps"] for s in loop["samples"]["tiny_gen"]
    ]
    for a, b in zip(fast["samples"]["tiny_mc"], loop["samples"]["tiny_mc"], strict=True):
        for (la, _), (lb, _) in zip([r[0] for r in a["resps"]], [r[0] for r in b["resps"]], strict=True):
            assert la == pytest.approx(lb, rel=1e-5, abs=1e-5)


def test_fast_scan_bad_input(tmp_path):
    path = save_tiny(tmp_path / "mamba", "mamba", seed=2)
    with pytest.raises(SpecError, match="fast_scan='maybe': allowed values are true or false"):
        MambaSteeredLM(pretrained=str(path), device="cpu", fast_scan="maybe")
