"""The validation check of `find`: the best calibration configuration is scored on other documents, paired
per document; if it raises their loss beyond doubt the spec is the identity (an undecided outcome is
written: tests/test_paired.py pins the decision). On the trained lag-copy model of test_finder_planted.py with
a planted bottleneck: documents of the same task confirm the found spec; documents whose answers are
random tokens (restoring the copy channels makes the model surer of the wrong token) reject it."""

from __future__ import annotations

import pytest
import torch
from test_finder_planted import ANSWER, DAMPING, LAYER, LENGTH, PLANTED, VOCAB, documents, trained_model

from lm_eval_ssmsteer.finder import CalibrationData, find


@pytest.fixture(scope="module")
def damped_model():
    model = trained_model()
    with torch.no_grad():
        model.base_model.layers[LAYER].mixer.out_proj.weight[PLANTED] *= DAMPING
    return model


def random_answers(n: int, seed: int) -> CalibrationData:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB + 2, (n, LENGTH), generator=g)
    return CalibrationData.from_ids([(row.tolist(), LENGTH - ANSWER) for row in ids], "random answers")


def test_validation_documents_of_the_same_task_keep_the_found_spec(damped_model):
    calibration = documents(32, seed=1, source="calibration")
    result = find(damped_model, calibration, progress=False, validation=documents(16, 3, "validation"))
    checked = result.spec.provenance["validation"]
    assert checked["held"] and checked["loss"]["steered"] < checked["loss"]["unsteered"], checked
    assert checked["documents"] == 16 and checked["source"] == "validation"
    assert result.spec.interventions[0].scale != 1.0
    assert result.best.loss < result.base.loss


def test_a_gain_that_does_not_hold_on_the_validation_documents_writes_the_identity(damped_model):
    calibration = documents(32, seed=1, source="calibration")
    with pytest.warns(UserWarning, match="not the loss on the validation documents"):
        # one pair validated (not method outlier's 6): the calibration's choice alone is judged there
        result = find(
            damped_model, calibration, progress=False, validation=random_answers(16, 4), validate_top=1
        )
    checked = result.spec.provenance["validation"]
    assert not checked["held"] and checked["loss"]["steered"] >= checked["loss"]["unsteered"], checked
    assert result.spec.interventions[0].scale == 1.0
    assert result.best == result.base
    assert result.spec.provenance["calibration_gain"]["loss"] == 0.0
    assert result.scores["validation"] == checked


def test_validation_documents_that_cannot_decide_keep_the_spec_and_say_so(damped_model, monkeypatch):
    from lm_eval_ssmsteer.finder import paired, search

    def undecided(before, after):
        return paired.PairedDifference(16, 0.0, 0.01, -0.02, 0.02, 8, 8, paired.UNDECIDED)

    monkeypatch.setattr(search.paired, "paired_difference", undecided)
    calibration = documents(32, seed=1, source="calibration")
    with pytest.warns(search.ValidationUndecided, match="cannot decide"):
        result = find(damped_model, calibration, progress=False, validation=random_answers(16, 4))
    checked = result.spec.provenance["validation"]
    assert checked["decision"] == "undecided" and not checked["held"]
    assert checked["loss_decrease"]["low"] < 0 < checked["loss_decrease"]["high"]
    assert result.rejected is None and result.spec.interventions[0].scale != 1.0


def test_validate_top_scores_several_pairs_on_validation_and_keeps_the_one_that_generalises(damped_model):
    calibration = documents(32, seed=1, source="calibration")
    validation = documents(16, 3, "validation")
    # causal: outlier's pool also holds the best pair's other channel counts (test_finder_magnitude.py)
    one = find(damped_model, calibration, method="causal", progress=False, validation=validation)
    three = find(
        damped_model, calibration, method="causal", progress=False, validation=validation, validate_top=3
    )
    first = one.spec.provenance["validation"]["candidates"]
    assert len(first) == 1 and first[0]["calibration_loss"] == one.best.loss  # today's choice
    candidates = three.spec.provenance["validation"]["candidates"]
    pairs = [(c["layer"], c["site"]) for c in candidates]
    assert 2 <= len(candidates) <= 3 and len(set(pairs)) == len(pairs), candidates
    losses = [c["calibration_loss"] for c in candidates]
    assert losses == sorted(losses) and losses[-1] < three.base.loss
    assert candidates[0]["calibration_loss"] == one.best.loss
    chosen = max(candidates, key=lambda c: c["loss_decrease"])
    iv = three.spec.interventions[0]
    assert (iv.layers[0], iv.site, iv.scale) == (chosen["layer"], chosen["site"], chosen["scale"])
    assert three.spec.provenance["validation"]["loss_decrease"]["mean"] == chosen["loss_decrease"]


def _validated(name: str, losses: list[float]) -> tuple:
    """A validated row as find builds it: (point, per-document scores, gain over an unsteered loss of 1)."""
    from types import SimpleNamespace

    from lm_eval_ssmsteer.finder import paired

    scores = SimpleNamespace(mean_loss=torch.tensor(losses))
    return name, scores, paired.paired_difference(scores.mean_loss, torch.ones(len(losses)))


def test_choice_paired_replaces_the_calibrations_choice_only_when_the_documents_call_the_other_better():
    from lm_eval_ssmsteer.finder.search import _choose_validated

    calibrations = _validated("calibration's", [0.7] * 8)
    clearly = _validated("clearly better", [0.40, 0.45, 0.42, 0.38, 0.41, 0.44, 0.39, 0.43])
    # a larger mean gain (loss 0.6875 < 0.7) that the documents cannot tell from the calibration's choice
    noisy = _validated("noisy", [0.4, 1.0, 0.4, 1.0, 0.4, 1.0, 0.4, 0.9])
    row, switch = _choose_validated([calibrations, clearly], "paired")
    assert row[0] == "clearly better" and switch.decision == "better" and switch.mean > 0.25
    row, switch = _choose_validated([calibrations, noisy], "paired")
    assert row[0] == "calibration's" and switch.decision == "undecided", switch
    assert _choose_validated([calibrations, noisy], "gain") == (noisy, None)  # the largest mean gain
    assert _choose_validated([clearly, calibrations], "paired") == (clearly, None)  # no comparison needed


def test_choice_paired_in_find_records_the_comparison_and_writes_what_it_decided(damped_model, monkeypatch):
    from lm_eval_ssmsteer.finder import search

    # the calibration's choice made the worse of the two pairs, so the better one must win a comparison
    original = search._validation_pool
    monkeypatch.setattr(search, "_validation_pool", lambda *a: original(*a)[::-1])
    calibration = documents(32, seed=1, source="calibration")
    validation = documents(16, 3, "validation")
    result = find(
        damped_model,
        calibration,
        method="causal",
        progress=False,
        validation=validation,
        validate_top=3,
        validate_choice="paired",
    )
    checked = result.spec.provenance["validation"]
    first, top = checked["candidates"][0], max(checked["candidates"], key=lambda c: c["loss_decrease"])
    assert top is not first and checked["choice"] == "paired", checked["candidates"]
    kept = top if checked["switch"]["decision"] == "better" else first
    iv = result.spec.interventions[0]
    assert (iv.layers[0], iv.site, iv.scale) == (kept["layer"], kept["site"], kept["scale"])
    assert checked["switch"]["n"] == 16
    with pytest.raises(search.FinderError, match="validate_choice: 'most'; allowed: gain, paired"):
        find(damped_model, calibration, progress=False, validation=validation, validate_choice="most")
    with pytest.raises(search.FinderError, match="'paired' chooses among validated pairs; .* not 1"):
        find(
            damped_model,
            calibration,
            progress=False,
            validation=validation,
            validate_top=1,
            validate_choice="paired",
        )
