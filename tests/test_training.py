"""The training pipeline of the reference models (lm_eval_ssmsteer/training): the data it trains on and
exact resumption of a run in stages."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from lm_eval_ssmsteer.taskdata import generate, prompts
from lm_eval_ssmsteer.taskdata import tokenizer as project_tokenizer
from lm_eval_ssmsteer.training import mix
from lm_eval_ssmsteer.training.cli import main as train_cli
from lm_eval_ssmsteer.training.loop import TrainConfig, learning_rate, train


def _decode(ids):
    tok = project_tokenizer.build_tokenizer()
    return "".join(tok.id_to_token(i) for i in ids)


def test_mqar_document_is_one_sequence_with_every_answer_as_target():
    doc = generate("ssm_mqar", "train", 1, seed=3, num_pairs=8, num_queries=4)[0]
    queries = prompts(doc)
    assert len(queries) == 4
    [(text, spans)] = mix.sequences(queries)
    [example] = mix.encode([("ssm_mqar", text, spans)])
    # each query's answer, predicted from the text up to it
    for context, answer in queries:
        want = f" {answer}"
        got = [example.targets[len(context) - 1 + k] for k in range(len(want))]
        assert _decode(got) == want
        assert text.startswith(context)
    # nothing but answer positions (and the final newline) carries a target
    n_targets = sum(t != -100 for t in example.targets)
    assert n_targets == sum(len(a) + 1 for _, a in queries) + 1


def test_zoology_query_targets_its_value_although_the_text_goes_on_with_noise():
    doc = generate("ssm_zoology_mqar", "train", 1, seed=1, num_pairs=4, length=32)[0]
    queries = prompts(doc)
    [(text, spans)] = mix.sequences(queries)
    [example] = mix.encode([("ssm_zoology_mqar", text, spans)])
    for context, answer in queries:
        assert len(answer) == 1
        assert _decode([example.targets[len(context) - 1], example.targets[len(context)]]) == f" {answer}"
    # the earlier queries' values are not in the text after them (Zoology puts other tokens there)
    assert any(text[len(c) + 1] != a for c, a in queries[:-1])


def test_epochs_are_reproducible_and_differ():
    spec = mix.default_mix(["ssm_copy", "ssm_induction"], docs_per_epoch=64, seed=5)
    a, b = mix.epoch_texts(spec, "full", 0), mix.epoch_texts(spec, "full", 0)
    assert a == b
    assert mix.epoch_texts(spec, "full", 1) != a
    assert {t for t, _, _ in a} == {"ssm_copy", "ssm_induction"}


def test_easy_stream_draws_the_lower_half_of_each_range():
    easy, full = mix.train_ranges(easy=True), mix.train_ranges()
    assert easy["ssm_copy"]["length"] == (4, 18)
    assert all(easy[t][k][1] <= full[t][k][1] for t in full for k in full[t])


def test_micro_batches_respect_the_token_budget_and_cover_every_example():
    spec = mix.default_mix(["ssm_copy", "ssm_phonebook"], docs_per_epoch=96)
    examples = mix.encode(mix.epoch_texts(spec, "full", 0))
    plan = mix.micro_batches(examples, 1024, "x")
    assert sorted(i for b in plan for i in b) == list(range(len(examples)))
    for b in plan:
        width = max(len(examples[i].ids) for i in b)
        assert len(b) == 1 or width * len(b) <= 1024


def test_schedule_warms_up_holds_then_decays():
    c = TrainConfig(arch="mamba", lr=1e-3, warmup=10, steps=100, decay_start=50, min_lr_ratio=0.1)
    assert learning_rate(c, 0) == pytest.approx(1e-4)
    assert learning_rate(c, 30) == learning_rate(c, 49) == 1e-3
    assert learning_rate(c, 75) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert learning_rate(c, 100) == pytest.approx(1e-4)


TINY = dict(
    arch="mamba", hidden=16, layers=1, steps=6, warmup=2, tokens_per_step=1024, micro_batches=2,
    tasks=("ssm_copy", "ssm_mqar"), docs_per_epoch=16, eval_every=0, eval_docs=2, curriculum_steps=2,
)  # fmt: skip


def _weights(run):
    return load_file(str(run / "checkpoint" / "model" / "model.safetensors"))


# the reference hybrid's layout at a tiny width: Mamba-2 layers 0 and 1, attention at layer 2
TINY_HYBRID = {**TINY, "arch": "bamba", "hidden": 128, "layers": 3}


@pytest.mark.parametrize("tiny", [TINY, TINY_HYBRID], ids=["mamba", "bamba"])
def test_a_run_in_stages_equals_one_uninterrupted_run(tmp_path, tiny):
    config = TrainConfig(**tiny)
    whole = train(tmp_path / "whole", config, device="cpu", workers=1)
    train(tmp_path / "staged", config, max_steps=3, device="cpu", workers=1)
    staged = train(tmp_path / "staged", resume=True, device="cpu", workers=1)
    assert whole["step"] == staged["step"] == 6
    # the curriculum handed over to the full stream, which rolled over an epoch (16 documents)
    assert whole["position"] == staged["position"]
    assert whole["position"]["stream"] == "full"
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "staged")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    opt_a = torch.load(tmp_path / "whole/checkpoint/optimizer.pt", weights_only=True)["state"]
    opt_b = torch.load(tmp_path / "staged/checkpoint/optimizer.pt", weights_only=True)["state"]
    for k in opt_a:
        assert torch.equal(opt_a[k]["exp_avg_sq"], opt_b[k]["exp_avg_sq"])
    # the shippable folder records both stages and loads with transformers
    info = json.loads((tmp_path / "staged/model/training.json").read_text())
    assert [s["steps"] for s in info["stages"]] == [[0, 3], [3, 6]]
    assert info["monitor_calibration"].keys() == {"ssm_copy", "ssm_mqar"}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "staged/model"))
    if tiny is TINY_HYBRID:
        from lm_eval_ssmsteer.mamba.arch import describe_model

        assert list(describe_model(loaded).mamba_layers) == [0, 1]
    ids = project_tokenizer.build_tokenizer().encode("ab", add_special_tokens=False).ids
    assert AutoTokenizer.from_pretrained(str(tmp_path / "staged/model"))("ab")["input_ids"] == ids


def test_a_run_from_another_models_weights_keeps_that_models_record(tmp_path):
    train(tmp_path / "parent", TrainConfig(**{**TINY, "steps": 2}), device="cpu", workers=1)
    child = TrainConfig(**{**TINY, "steps": 1, "init": str(tmp_path / "parent" / "model")})
    train(tmp_path / "child", child, device="cpu", workers=1)
    info = json.loads((tmp_path / "child/model/training.json").read_text())
    assert [s["steps"] for s in info["init_record"]["stages"]] == [[0, 2]]
    assert info["config"]["init"] == str(tmp_path / "parent" / "model")
    # and it survives a resumed stage
    train(tmp_path / "child", resume=True, overrides={"steps": 2}, device="cpu", workers=1)
    info = json.loads((tmp_path / "child/model/training.json").read_text())
    assert info["init_record"]["steps_done"] == 2
    assert [s["steps"] for s in info["stages"]] == [[0, 1], [1, 2]]


def test_decay_in_budget_needs_an_earlier_stage(tmp_path):
    with pytest.raises(ValueError, match="earlier stage"):
        train(tmp_path / "r", TrainConfig(**TINY), decay_in_budget=True, time_budget=10, device="cpu")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arch", "mamba", "--weights", "copy"], "--weights 'copy': expected TASK=NUMBER"),
        (
            ["--arch", "mamba", "--weights", "induction=2", "--tasks", "ssm_copy"],
            "task 'ssm_induction' is not",
        ),
        (["--arch", "mamba", "--steps", "0"], "steps=0: must be >= 1"),
        (["--resume"], "no checkpoint"),
        ([], "--arch is needed"),
    ],
)
def test_cli_errors_name_the_field(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        train_cli(["--run", str(tmp_path / "r"), "--device", "cpu", *argv])
    assert message in str(e.value)


def test_word_start_weights_pick_each_values_first_character():
    docs = generate("ssm_niah_multiquery", "train", 1, seed=3, length=600, num_needles=4, num_queries=2)
    examples = mix.encode([("ssm_niah_multiquery", t, s) for t, s in mix.sequences(prompts(docs[0]))])
    ids, targets = mix.collate(examples, "cpu")
    weights = mix.word_start_weights(ids, targets, 8.0)
    answer = prompts(docs[0])[-1][1]  # "7133084, 1111101." style: two 7-digit values
    first, second = (value.strip() for value in answer.rstrip(".").split(","))
    picked = [_decode([int(targets[0, i])]) for i in torch.nonzero(weights[0] == 8.0).flatten().tolist()]
    assert picked == [first[0], second[0]]
    # every other target weighs 1, positions without a target 0
    assert torch.equal(weights[0] > 0, targets[0] != -100)
    assert int((weights[0] == 1.0).sum()) == int((targets[0] != -100).sum()) - 2
    # weight 1 is the unweighted objective
    assert torch.equal(mix.word_start_weights(ids, targets, 1.0), (targets != -100).float())


def test_word_start_weight_run_trains_resumes_and_records_it(tmp_path):
    config = TrainConfig(**{**TINY, "word_start_weight": 4.0})
    whole = train(tmp_path / "whole", config, device="cpu", workers=1)
    train(tmp_path / "staged", config, max_steps=3, device="cpu", workers=1)
    staged = train(tmp_path / "staged", resume=True, device="cpu", workers=1)
    assert whole["step"] == staged["step"]
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "staged")
    assert all(torch.equal(a[k], b[k]) for k in a)
    train(tmp_path / "plain", TrainConfig(**TINY), device="cpu", workers=1)
    plain = _weights(tmp_path / "plain")
    assert any(not torch.equal(a[k], plain[k]) for k in a), "the weight changed nothing"
    info = json.loads((tmp_path / "staged/model/training.json").read_text())
    assert info["config"]["word_start_weight"] == 4.0
    with pytest.raises(ValueError, match="word_start_weight=0"):
        TrainConfig(**{**TINY, "word_start_weight": 0})


def test_range_overrides_change_only_their_knob_and_are_checked():
    ranges = {"ssm_niah_multiquery": {"num_queries": [2, 4]}}
    changed, default = mix.train_ranges(overrides=ranges), mix.train_ranges()
    assert changed["ssm_niah_multiquery"]["num_queries"] == (2, 4)
    assert {t: k for t, k in changed.items() if t != "ssm_niah_multiquery"} == {
        t: k for t, k in default.items() if t != "ssm_niah_multiquery"
    }
    assert mix.train_ranges(overrides={"ssm_passkey": {"length": [300, 400]}})["ssm_passkey"]["length"] == (
        300,
        400,
    )
    # every multiquery document of the stream asks for two keys or more (capped by its needles)
    spec = mix.default_mix(["ssm_niah_multiquery"], docs_per_epoch=64, ranges=ranges)
    texts = mix.epoch_texts(spec, "full", 0)
    assert texts and all(" and " in text.rsplit("?", 1)[0].rsplit("\n", 1)[-1] for _, text, _ in texts)
    # without overrides the data is what it was
    plain = mix.default_mix(["ssm_copy"], docs_per_epoch=32)
    assert plain.ranges is None
    assert mix.epoch_texts(plain, "full", 0) == mix.epoch_texts(
        mix.default_mix(["ssm_copy"], docs_per_epoch=32, ranges={}), "full", 0
    )
    for bad, message in (
        ({"ssm_nope": {"length": [1, 2]}}, "task 'ssm_nope' is not trainable"),
        ({"ssm_copy": {"num_pairs": [1, 2]}}, "ssm_copy has no knob 'num_pairs'; its knobs: length"),
        ({"ssm_copy": {"length": [5, 2]}}, "ssm_copy.length=5:2"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            mix.train_ranges(overrides=bad)


def test_cli_ranges(tmp_path):
    with pytest.raises(SystemExit) as e:
        train_cli(
            ["--run", str(tmp_path / "r"), "--device", "cpu", "--arch", "mamba", "--ranges", "copy.length"]
        )
    assert "expected TASK.KNOB=LOW:HIGH" in str(e.value)
    with pytest.raises(SystemExit) as e:
        train_cli(
            ["--run", str(tmp_path / "r"), "--device", "cpu", "--arch", "mamba", "--ranges", "copy.size=1:2"]
        )
    assert "ssm_copy has no knob 'size'" in str(e.value)


def test_deferred_recall_answers_the_asked_keys_in_order():
    from lm_eval_ssmsteer.training.auxiliary import deferred_recall

    docs = deferred_recall(50, seed=7, num_pairs=6, num_queries=3)
    assert docs == deferred_recall(50, seed=7, num_pairs=6, num_queries=3)  # seeded
    assert docs != deferred_recall(50, seed=8, num_pairs=6, num_queries=3)
    for [(context, answer)] in docs:
        pairs_text, question = context.removeprefix("Pairs: ").split(". What are the numbers for ")
        pairs = dict(p.split(": ") for p in pairs_text.split(", "))
        assert len(pairs) == 6 and len(set(pairs.values())) == 6  # distinct keys and values
        asked = question.split("?")[0].split(" and ")
        assert len(asked) == 3 and context.endswith(f"The numbers for {' and '.join(asked)} are")
        assert answer == ", ".join(pairs[k] for k in asked) + "."
    # more queries than pairs: every key once
    [[(context, answer)]] = deferred_recall(1, seed=1, num_pairs=2, num_queries=4)
    assert len(answer.split(", ")) == 2
    for bad in ({"num_pairs": 0, "num_queries": 2}, {"num_pairs": 1001, "num_queries": 2}):
        with pytest.raises(ValueError, match="num_pairs"):
            deferred_recall(1, seed=0, **bad)


def test_a_training_only_task_joins_the_mix_only_when_named():
    from lm_eval_ssmsteer.training.monitor import monitor_set

    assert "aux_deferred_recall" not in mix.default_mix(docs_per_epoch=64).tasks
    spec = mix.default_mix(["ssm_copy"], {"aux_deferred_recall": 2.0}, docs_per_epoch=64)
    assert spec.tasks == ("ssm_copy", "aux_deferred_recall") and spec.weights["aux_deferred_recall"] == 2.0
    texts = [t for t in mix.epoch_texts(spec, "full", 0) if t[0] == "aux_deferred_recall"]
    assert texts
    # the answer (after "are") is the target, nothing before it
    [example] = mix.encode(texts[:1])
    task, text, _ = texts[0]
    start = text.rindex(" are") + len(" are")
    targets = [t for t in example.targets if t != -100]
    assert _decode(targets) == text[start:] and all(t == -100 for t in example.targets[: start - 1])
    # its knobs can be overridden and are checked; the easy stream draws from the lower halves
    ranges = {"aux_deferred_recall": {"num_queries": [4, 4]}}
    four = mix.default_mix(["ssm_copy"], {"aux_deferred_recall": 1.0}, docs_per_epoch=64, ranges=ranges)
    for _, text, _ in mix.epoch_texts(four, "full", 0):
        if text.startswith("Pairs:"):
            n_pairs = text.split(". What")[0].count(": ") - 1
            assert text.split("?")[0].count(" and ") == min(4, n_pairs) - 1
    assert mix.aux_ranges("aux_deferred_recall", easy=True)["num_pairs"] == (2, 9)
    with pytest.raises(ValueError, match="aux_deferred_recall has no knob 'length'"):
        mix.check_ranges({"aux_deferred_recall": {"length": [1, 2]}})
    # the monitor skips it (no calibration split)
    assert list(monitor_set(spec.tasks, 2)) == ["ssm_copy"]


def test_cli_keeps_a_training_only_task_name(tmp_path):
    run = tmp_path / "r"
    args = ["--run", str(run), "--device", "cpu", "--arch", "mamba", "--hidden", "16", "--layers", "1"]
    args += ["--steps", "2", "--warmup", "1", "--tokens-per-step", "1024", "--micro-batches", "2"]
    args += ["--docs-per-epoch", "16", "--eval-every", "0", "--tasks", "ssm_copy"]
    args += ["--weights", "aux_deferred_recall=2", "--ranges", "aux_deferred_recall.num_queries=2:3"]
    train_cli(args)
    info = json.loads((run / "model/training.json").read_text())
    assert info["config"]["ranges"] == {"aux_deferred_recall": {"num_queries": [2, 3]}}
    assert "aux_deferred_recall" in json.dumps(info["config"]["weights"])
    # the ranges it trained on are recorded beside the suite's: the override and the other knob's default
    assert info["train_ranges"]["aux_deferred_recall"] == {"num_pairs": [2, 16], "num_queries": [2, 3]}
    assert "ssm_copy" in info["train_ranges"]
