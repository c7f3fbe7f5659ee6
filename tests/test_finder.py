"""The bottleneck finder: differentiable scales, the methods, the CLI's outputs and its early errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import ARCHITECTURES, HYBRIDS, make_model, save_tiny

from lm_eval_ssmsteer.cli import main
from lm_eval_ssmsteer.finder import CalibrationData, FinderError, find
from lm_eval_ssmsteer.finder import search as finder_search
from lm_eval_ssmsteer.finder.methods import LayerInputs, evaluate, per_document
from lm_eval_ssmsteer.mamba.arch import describe_model
from lm_eval_ssmsteer.mamba.sites import SITES
from lm_eval_ssmsteer.spec import SteeringSpec, load_spec
from lm_eval_ssmsteer.steering import steer, steer_factors
from lm_eval_ssmsteer.steering.plan import resolve


def _answer_logprob(model, ids):
    return model(ids, use_cache=False).logits[:, -1].log_softmax(-1)[:, 7].sum()


@pytest.mark.parametrize("arch", ARCHITECTURES + HYBRIDS)
def test_factor_gradient_equals_the_finite_difference_of_real_steering(arch):
    model = make_model(arch, seed=3).double()
    info = describe_model(model)
    layer = 1 if arch in ARCHITECTURES else info.mamba_layers[-1]  # a hybrid's layer 1 is attention
    ids = torch.randint(1, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unsteered = _answer_logprob(model, ids)
    factors = {
        (layer, site): torch.ones(info.site_width(site), dtype=torch.float64, requires_grad=True)
        for site in SITES
    }
    with steer_factors(model, factors):
        value = _answer_logprob(model, ids)
    value.backward()
    torch.testing.assert_close(value.detach(), unsteered)  # factors of one change nothing
    # logits come back in float32, rounded by ~5e-7 near -5: a step of 3e-2 keeps that under 1% of a
    # gradient down to ~2e-3 (transformers 5.17's tiny mamba2 has 2.6e-3 at delta; 1e-2 gave 1.5% off).
    # Central differences keep the step's own error O(eps²).
    eps = 3e-2
    for (layer, site), factor in factors.items():
        channel = int(factor.grad.abs().argmax())
        moved = []
        for scale in (1 + eps, 1 - eps):
            with torch.no_grad(), steer(model, SteeringSpec.single(layer, site, [channel], scale)):
                moved.append(float(_answer_logprob(model, ids)))
        finite_difference = (moved[0] - moved[1]) / (2 * eps)
        assert abs(finite_difference) > 1e-6, f"{site}: no effect, the comparison could not fail"
        assert factor.grad[channel].item() == pytest.approx(finite_difference, rel=1e-2, abs=1e-6), site


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_factor_per_sequence_splits_the_gradient_by_sequence(arch):
    model = make_model(arch, seed=5).double()
    info = describe_model(model)
    ids = torch.randint(1, 200, (3, 9), generator=torch.Generator().manual_seed(1))
    shared = {(2, s): torch.ones(info.site_width(s), dtype=torch.float64, requires_grad=True) for s in SITES}
    per_row = {
        p: torch.ones(3, 1, f.numel(), dtype=torch.float64, requires_grad=True) for p, f in shared.items()
    }
    alone = {p: torch.ones(f.numel(), dtype=torch.float64, requires_grad=True) for p, f in shared.items()}
    for factors, batch in ((shared, ids), (per_row, ids), (alone, ids[1:2])):
        with steer_factors(model, factors):
            _answer_logprob(model, batch).backward()
    for pair, factor in shared.items():
        torch.testing.assert_close(per_row[pair].grad.sum((0, 1)), factor.grad)
        torch.testing.assert_close(per_row[pair].grad[1, 0], alone[pair].grad)


def test_steer_factors_rejects_a_factor_of_the_wrong_width():
    model = make_model("mamba")
    with (
        pytest.raises(ValueError, match=r"shape must be \(64,\) or \(batch, 1, 64\)"),
        steer_factors(model, {(0, "delta"): torch.ones(3)}),
    ):
        pass


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_evaluating_from_a_cached_layer_input_equals_the_whole_forward(arch):
    model = make_model(arch, seed=4)
    batches = CalibrationData.from_ids(_docs(8), "random ids").batches(tokens_per_batch=64)
    spec = SteeringSpec.single(2, "residual" if arch == "mamba2" else "delta", [0, 3], 2.5)
    whole = evaluate(model, batches, spec)
    from_layer = evaluate(model, batches, spec, start=LayerInputs(model, batches, 1))
    assert from_layer.loss == pytest.approx(whole.loss, rel=1e-5)
    assert from_layer.accuracy == whole.accuracy


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_layer_input_run_on_from_an_earlier_one_equals_the_one_from_the_tokens(arch):
    """The finder caches each layer's input once, the later ones run on from the nearest cached earlier
    layer: the same tensors, bit for bit, as from the tokens, and the same steered loss from them."""
    model = make_model(arch, seed=4)
    batches = CalibrationData.from_ids(_docs(8), "random ids").batches(tokens_per_batch=64)
    first = LayerInputs(model, batches, 0)  # the tiny models have three layers
    for layer in (1, 2):
        stepped = LayerInputs(model, batches, layer, below=first)
        fresh = LayerInputs(model, batches, layer)
        assert stepped.layer == layer and len(stepped.hidden) == len(fresh.hidden) == len(batches)
        for got, want in zip(stepped.hidden, fresh.hidden, strict=True):
            assert torch.equal(got, want)
    spec = SteeringSpec.single(2, "residual" if arch == "mamba2" else "delta", [0, 3], 2.5)
    assert evaluate(model, batches, spec, start=stepped) == evaluate(model, batches, spec, start=fresh)
    with pytest.raises(ValueError, match="below: the input of layer 2; allowed: a layer before 1"):
        LayerInputs(model, batches, 1, below=stepped)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_layers_scan_is_replayed_for_sites_after_it_and_run_for_sites_before_it(arch):
    """Steering a cached layer input's own layer after its scan (ssm_out, gate, mixer_out, residual), the
    finder computes that scan's unsteered output once per batch and replays it: the same per-document
    losses, bit for bit, as from a fresh cache, and only the recorded output is used (altered, the loss
    moves). Steering Δ, B or C there changes the scan's inputs: nothing is recorded or replayed."""
    model = make_model(arch, seed=4)
    batches = CalibrationData.from_ids(_docs(8), "random ids").batches(tokens_per_batch=64)
    whole_forward = None
    for site in SITES:
        spec = SteeringSpec.single(1, site, [0, 3], 2.5)
        start = LayerInputs(model, batches, 1)
        first = per_document(model, batches, spec, start)
        again = per_document(model, batches, spec, start)
        fresh = per_document(model, batches, spec, LayerInputs(model, batches, 1))
        assert torch.equal(first.loss, again.loss) and torch.equal(first.loss, fresh.loss), site
        whole_forward = per_document(model, batches, spec)
        torch.testing.assert_close(first.loss, whole_forward.loss, rtol=1e-5, atol=1e-6)
        if site in ("delta", "B", "C"):
            assert start.scans == {}, site
            continue
        assert sorted(start.scans) == [(i, 0) for i in range(len(batches))], site
        for key, value in start.scans.items():  # a replayed output altered moves the loss: it is what runs
            y = value[0] if isinstance(value, tuple) else value
            start.scans[key] = (y * 0.5, *value[1:]) if isinstance(value, tuple) else y * 0.5
        assert not torch.equal(per_document(model, batches, spec, start).loss, first.loss), site
        # another site of the same layer, before the scan, runs the scan itself
        before = SteeringSpec.single(1, "delta", [0, 3], 2.5)
        assert torch.equal(
            per_document(model, batches, before, start).loss,
            per_document(model, batches, before, LayerInputs(model, batches, 1)).loss,
        ), site
    assert whole_forward is not None


def test_the_finders_layer_inputs_keep_replay_records_for_the_layer_asked_for_last():
    """Memory: the scan outputs recorded for replay stay only on the layer the search asked for last."""
    model = make_model("mamba", seed=4)
    batches = CalibrationData.from_ids(_docs(8), "random ids").batches(tokens_per_batch=64)
    starts = finder_search._Starts(model, batches, describe_model(model))
    one = starts(1)
    per_document(model, batches, SteeringSpec.single(1, "ssm_out", [0, 3], 2.5), one)
    assert len(one.scans) == len(batches)
    assert starts(1) is one and len(one.scans) == len(batches)  # the same layer again: kept
    two = starts(2)
    per_document(model, batches, SteeringSpec.single(2, "gate", [1], 0.5), two)
    assert one.scans == {} and len(two.scans) == len(batches)


@pytest.mark.parametrize("arch", ARCHITECTURES + HYBRIDS)
def test_per_document_loss_from_the_answer_positions_equals_the_full_logits(arch):
    """The finder projects the vocabulary only where an answer token is predicted; each document's loss and
    greedy correctness must be those of the whole logits, with answers at different positions in a batch."""
    model = make_model(arch, seed=5).double()
    g = torch.Generator().manual_seed(1)
    shapes = ((16, 4), (11, 2), (14, 6), (9, 1), (16, 8), (12, 3), (15, 5), (10, 2))  # (length, answer)
    docs = [(torch.randint(1, 250, (n,), generator=g).tolist(), n - a) for n, a in shapes]
    batches = CalibrationData.from_ids(docs, "random ids").batches(tokens_per_batch=80)
    got = per_document(model, batches)
    losses, rights = [], []
    with torch.no_grad():
        for ids, labels in batches:
            logits = model(ids, use_cache=False).logits[:, :-1].float()  # the finder's loss is fp32
            target = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), target, ignore_index=-100, reduction="none"
            )
            losses.append(nll.sum(1))
            rights.append(((logits.argmax(-1) == target) | (target == -100)).all(1))
    assert len(batches) > 1 and sorted(got.tokens.tolist()) == sorted(a for _, a in shapes)
    torch.testing.assert_close(got.loss, torch.cat(losses).double(), rtol=1e-6, atol=1e-6)
    assert got.right.tolist() == torch.cat(rights).tolist()


def _docs(n: int, seed: int = 0) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(1, 250, (16,), generator=g).tolist(), 12) for _ in range(n)]


@pytest.mark.parametrize("method", ["causal", "attribution", "variance", "dt-bias"])
def test_every_method_returns_a_spec_that_fits_the_model_and_records_its_provenance(method):
    model = make_model("mamba2")
    data = CalibrationData.from_ids(_docs(8), "random ids")
    result = find(model, data, sites=["mixer_out", "delta"], method=method, verify=2, progress=False)
    resolve(result.spec, describe_model(model))
    provenance = result.spec.provenance
    assert provenance["method"] == method
    assert provenance["calibration"]["sha256"] == data.sha256
    assert provenance["model_fingerprint"] == describe_model(model).fingerprint()
    assert provenance["calibration_gain"]["loss"] >= 0.0  # the identity is always a candidate
    assert result.best.loss <= result.base.loss
    assert result.scores["sweep"], "the scale curve is kept"
    if method == "dt-bias":
        assert {p["site"] for p in result.scores["sweep"]} == {"mixer_out"}


def test_calibration_data_needs_enough_documents_with_answers():
    with pytest.raises(FinderError, match="at least 8"):
        CalibrationData.from_ids(_docs(3), "short")
    with pytest.raises(FinderError, match="document 1 has no answer tokens"):
        CalibrationData.from_ids([([5, 6, 7], 1), ([5, 6], 2), *_docs(8)], "no answer")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("mamba"), "mamba", seed=1)


def _data_file(folder: Path, n: int) -> Path:
    path = folder / "calibration.jsonl"
    path.write_text(
        "".join(json.dumps({"context": f"key {i} is", "answer": f"v{i % 5}"}) + "\n" for i in range(n))
    )
    return path


def test_find_command_writes_spec_scores_and_heatmap(model_dir, tmp_path, capsys):
    out = tmp_path / "found.json"
    data = _data_file(tmp_path, 8)
    held = tmp_path / "held.jsonl"  # 10 documents, 2 of them also in the calibration file: dropped
    held.write_text(
        "".join(json.dumps({"context": f"key {i} is", "answer": f"v{i % 5}"}) + "\n" for i in range(6, 16))
    )
    args = ["find", "--model", str(model_dir), "--out", str(out), "--data", str(data)]
    args += ["--validation-data", str(held)]
    rc = main([*args, "--sites", "mixer_out", "gate", "--method", "attribution", "--no-progress"])
    assert rc == 0, capsys.readouterr().out
    spec = load_spec(str(out))
    assert spec.provenance["calibration"]["documents"] == 8
    checked = json.loads((tmp_path / "found.scores.json").read_text())["validation"]
    assert checked["documents"] == 8 and checked["source"] == str(held), checked  # the 2 shared ones left out
    scores = json.loads((tmp_path / "found.scores.json").read_text())
    assert set(scores["pairs"]) == {f"{layer}/{site}" for layer in range(3) for site in ("mixer_out", "gate")}
    assert (tmp_path / "found.heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp"))


def test_docs_per_task_defaults_to_enough_documents_for_few_tasks():
    from lm_eval_ssmsteer.finder.data import docs_per_task

    # the default's 4 tasks keep 2 each; fewer tasks get as many as make 8 documents
    assert [docs_per_task(n) for n in (4, 5, 3, 2, 1)] == [2, 2, 3, 4, 8]
    assert docs_per_task(3, 5) == 5 and docs_per_task(1, 8) == 8
    with pytest.raises(FinderError, match="--docs-per-task 7 with 1 task"):
        docs_per_task(1, 7)


def test_find_command_draws_enough_calibration_documents_for_three_tasks(model_dir, tmp_path, monkeypatch):
    """`ssmsteer find --tasks` with three tasks and no --docs-per-task: 3 a task (9 documents, and 9 for
    validation), where the flat default of 2 gave 6 and stopped."""
    seen = {}

    def stop(model, data, **kwargs):
        seen.update(data=data, **kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(finder_search, "find", stop)
    args = ["find", "--model", str(model_dir), "--out", str(tmp_path / "f.json"), "--no-progress"]
    with pytest.raises(SystemExit):
        main([*args, "--tasks", "ssm_copy", "ssm_kv_retrieval", "ssm_induction"])
    assert len(seen["data"].examples) == 9 and "x 3 docs" in seen["data"].source
    assert len(seen["validation"].examples) == 9


def test_find_command_passes_the_steep_order_and_refuses_an_unknown_one(
    model_dir, tmp_path, capsys, monkeypatch
):
    seen = {}

    def stop(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(finder_search, "find", stop)
    args = ["find", "--model", str(model_dir), "--out", str(tmp_path / "f.json")]
    args += ["--data", str(_data_file(tmp_path, 8)), "--no-progress"]
    with pytest.raises(SystemExit):
        main([*args, "--steep-order", "ratio"])
    assert seen["steep_order"] == "ratio"
    with pytest.raises(SystemExit) as refused:
        main([*args, "--steep-order", "largest"])
    assert refused.value.code == 2
    assert "--steep-order: invalid choice: 'largest'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--descend", "12"])
    assert seen["descend"] == 12
    with pytest.raises(SystemExit):
        main([*args, "--blocks", "8"])
    assert seen["blocks"] == 8
    assert seen["max_scale"] == 8
    with pytest.raises(SystemExit):
        main([*args, "--max-scale", "50"])
    assert seen["max_scale"] == 50


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config

    folder = tmp_path_factory.mktemp("gpt2")
    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "leave-one-out"], "--method: 'leave-one-out' is not a method; allowed: outlier"),
        (["--sites", "mixer_out", "hidden"], "--sites: unknown site(s) ['hidden']; allowed: mixer_out"),
        (["--method", "variance", "--sites", "delta"], "variance reads only mixer_out, residual"),
        (["--tasks", "ssm_nope"], "--tasks: unknown task(s) ['ssm_nope']"),
        (["--data", "{tmp}/empty.jsonl"], "0 documents; at least 8 are needed"),
        (["--data", "{tmp}/calibration.jsonl"], "3 documents; at least 8 are needed"),
        (["--data", "{tmp}/missing.jsonl"], "is not a file"),
        (["--out", "{tmp}/no_such_folder/spec.json"], "does not exist"),
        (["--out", "{tmp}"], "is a folder"),
        (["--candidates", "0"], "--candidates: 0 is too small; allowed: an integer >= 1"),
        (["--screen", "0"], "--screen: 0 is too small; allowed: an integer >= 1"),
        (["--validate-top", "0"], "--validate-top: 0 is too small; allowed: an integer >= 1"),
        (["--descend", "-1"], "--descend: -1 is too small; allowed: an integer >= 0"),
        (["--blocks", "-1"], "--blocks: -1 is too small; allowed: an integer >= 0"),
        (["--grow", "-1"], "--grow: -1 is too small; allowed: an integer >= 0"),
        (["--method", "probe", "--blocks", "8"], "--blocks 8 with --method probe; allowed with causal and"),
        (["--max-scale", "7"], "--max-scale: 7; allowed: a whole number from 8 to 100"),
        (["--max-scale", "101"], "--max-scale: 101; allowed: a whole number from 8 to 100"),
        (["--narrow", "-1"], "--narrow: -1; allowed: a whole number of channels, 0 (off) or more"),
        (["--method", "causal", "--narrow", "16"], "--narrow: 16 with method 'causal'; allowed with method"),
        (["--narrow-floor", "-1"], "--narrow-floor: -1.0; allowed: a number >= 0"),
        (["--method", "causal", "--balance"], "--balance: on with method 'causal'; allowed with method"),
        (["--narrow-floor", "nan"], "--narrow-floor: nan; allowed: a number >= 0"),
        (
            ["--validate-top", "1", "--validate-choice", "paired"],
            "--validate-choice paired chooses among validated pairs; allowed with --validate-top 2 or more",
        ),
        (
            ["--validation-docs-per-task", "-1"],
            "--validation-docs-per-task: -1 is too small; allowed: an integer >= 0",
        ),
        (["--validation-data", "{tmp}/calibration.jsonl"], "3 documents; at least 8 are needed"),
        (
            ["--tasks", "ssm_copy", "ssm_kv_retrieval", "ssm_induction", "--docs-per-task", "2"],
            "--docs-per-task 2 with 3 task(s) gives 6 documents; at least 8 are needed: "
            "--docs-per-task 3 or more",
        ),
        (
            ["--tasks", "ssm_copy", "--validation-docs-per-task", "4"],
            "--validation-docs-per-task 4 with 1 task(s) gives 4 documents; at least 8 are needed",
        ),
        (["--model", "{gpt2}"], "model_type 'gpt2' is not a supported Mamba-family model"),
    ],
)
def test_bad_input_fails_clearly_before_the_search_and_writes_nothing(
    extra, message, model_dir, gpt2_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(finder_search, "find", lambda *a, **k: pytest.fail("the search started"))
    (tmp_path / "empty.jsonl").write_text("")
    _data_file(tmp_path, 3)
    out = tmp_path / "spec.json"
    extra = [a.format(tmp=tmp_path, gpt2=gpt2_dir) for a in extra]  # a repeated --out/--model: last wins
    rc = main(["find", "--model", str(model_dir), "--out", str(out), *extra])
    assert rc == 2
    assert message in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.jsonl", "empty.jsonl"]


def _greedy_answers(model, examples: list[tuple[list[int], int]]) -> list[tuple[list[int], int]]:
    """The documents with their answers replaced by the model's own greedy continuation: steering that
    flattens the predictions (what the sweep finds on random answers) raises the loss on these."""
    out = []
    for ids, start in examples:
        ids = list(ids[:start])
        with torch.no_grad():
            for _ in range(4):
                ids.append(int(model(torch.tensor([ids]), use_cache=False).logits[0, -1].argmax()))
        out.append((ids, start))
    return out


@pytest.fixture(scope="module")
def rejected_run():
    """find (causal) on the tiny Mamba with every tqdm bar it opens recorded; validation rejects its
    choice."""
    from tqdm.auto import tqdm

    class RecordedBar(tqdm):
        made: list[RecordedBar] = []

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.first_total, self.updates = self.total, 0
            RecordedBar.made.append(self)

        def update(self, n=1):
            self.updates += 1
            return super().update(n)

    model = make_model("mamba")
    data = CalibrationData.from_ids(_docs(8), "random ids")
    validation = CalibrationData.from_ids(_greedy_answers(model, _docs(8, seed=1)), "own predictions")
    with pytest.MonkeyPatch.context() as patch, pytest.warns(UserWarning, match="validation documents"):
        patch.setattr(finder_search, "tqdm", RecordedBar)
        result = find(
            model, data, sites=["mixer_out", "delta"], method="causal", verify=2, validation=validation
        )
    return model, data, validation, result, RecordedBar.made


def test_find_shows_one_bar_per_phase_with_its_total_fixed_when_the_phase_starts(rejected_run):
    _, data, validation, _, bars = rejected_run
    phases = [
        "unsteered",
        "attribution",
        "layer inputs",
        "screen",
        "verify",
        "sweep",
        "re-choose k",
        "validation",
    ]
    assert [bar.desc for bar in bars] == [f"find: {phase}" for phase in phases]
    for bar in bars:  # one update per item (batch or configuration), so tqdm shows rate and ETA
        assert bar.total == bar.first_total == bar.n == bar.updates > 0, bar.desc
    totals = {bar.desc: bar.total for bar in bars}
    assert totals["find: unsteered"] == totals["find: attribution"] == len(data.batches())
    assert totals["find: validation"] == 2 * len(validation.batches())


def test_heatmap_title_names_the_choice_or_why_the_identity_was_written(rejected_run):
    model, data, _, rejected, _ = rejected_run
    arch, sites = describe_model(model), ["mixer_out", "delta"]
    assert rejected.rejected == "rejected by validation" and rejected.spec.interventions[0].scale == 1.0
    chosen = rejected.scores["chosen"]
    title = finder_search._heatmap_figure(rejected, arch, sites).axes[0].get_title()
    assert title == (
        f"causal pair score; best: layer {chosen['layer']} {chosen['site']}\n"
        "rejected by validation: identity written"
    )
    # no validation: the choice is written
    kept = find(model, data, sites=sites, method="causal", verify=2, progress=False)
    title = finder_search._heatmap_figure(kept, arch, sites).axes[0].get_title()
    assert kept.rejected is None
    assert title == f"causal pair score; chosen: layer {chosen['layer']} {chosen['site']}"


def test_find_command_prints_warnings_as_one_line_without_source(model_dir, tmp_path, capsys, monkeypatch):
    def no_matplotlib(*args):
        raise ImportError("matplotlib")

    monkeypatch.setattr(finder_search, "_heatmap", no_matplotlib)
    args = ["find", "--model", str(model_dir), "--out", str(tmp_path / "found.json")]
    args += ["--data", str(_data_file(tmp_path, 8)), "--sites", "mixer_out", "--no-progress"]
    assert main(args) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warn" in line.lower()]
    assert warned == ["warning: matplotlib is not installed (extra 'plots'): no heatmap PNG written"]
