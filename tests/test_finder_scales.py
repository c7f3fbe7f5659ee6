"""``max_scale`` (issue 22): a damping by p is undone at 1/p, x50 for a x0.02 plant, which the sweep's
largest scale, x8, does not reach. On the trained lag-copy model, method ``causal`` (no outlier screen,
whose restoring scale could reach past x8 already) finds a x0.02 mixer_out plant's channels; at the
default it can only write x8, which leaves much of the damage; with ``max_scale=50`` the sweep goes on
along the WIDE_SCALES ladder and writes x50, close to the intact loss."""

from __future__ import annotations

import pytest
from test_finder_planted import documents, trained_model

from lm_eval_ssmsteer.finder import find
from lm_eval_ssmsteer.finder import search as finder_search
from lm_eval_ssmsteer.finder.data import FinderError
from lm_eval_ssmsteer.finder.methods import evaluate
from lm_eval_ssmsteer.mamba.fastscan import use_fast_scan
from lm_eval_ssmsteer.studies.damping import plant


def test_wide_scales_are_the_ladder_up_to_max_scale_and_itself():
    assert finder_search.wide_scales(8) == ()
    assert finder_search.wide_scales(10) == (10.0,)
    assert finder_search.wide_scales(32) == (13.0, 20.0, 32.0)
    assert finder_search.wide_scales(40) == (13.0, 20.0, 32.0, 40.0)
    assert finder_search.wide_scales(100) == (13.0, 20.0, 32.0, 50.0, 80.0, 100.0)
    for bad in (7, 101, 0, 8.5, True, "50"):
        with pytest.raises(FinderError, match="max_scale: .*allowed: a whole number from 8 to 100"):
            finder_search.wide_scales(bad)


def test_max_scale_undoes_a_strong_damping_that_x8_cannot():
    model = trained_model()
    calibration = documents(32, seed=1, source="calibration")
    sites = ["mixer_out", "delta", "B"]
    with use_fast_scan():
        intact = evaluate(model, calibration.batches()).loss
        channels = plant(model, 0, "mixer_out", 4, 0.02, seed=8)
        default = find(model, calibration, sites=sites, method="causal", progress=False)
        wide = find(model, calibration, sites=sites, method="causal", max_scale=50, progress=False)
    for result in (default, wide):
        chosen = result.spec.interventions[0]
        assert (chosen.layers[0], chosen.site, set(chosen.channels)) == (0, "mixer_out", set(channels))
    assert default.spec.interventions[0].scale == 8.0
    assert wide.spec.interventions[0].scale == 50.0
    # x8 leaves most of the damage; x50 takes the loss back near the intact model's
    assert default.best.loss - intact > 0.5 * (default.base.loss - intact)
    assert wide.best.loss - intact < 0.1 * (wide.base.loss - intact)
    # the default sweep never goes past x8; max_scale adds the ladder at the best count, once each, and
    # (x50 won) the other counts at x50
    assert max(p["scale"] for p in default.scores["sweep"] if p["stage"] == "sweep") == 8.0
    past = [p for p in wide.scores["sweep"] if p["scale"] > finder_search.PROBE_SCALE]
    assert {p["stage"] for p in past} == {"sweep"}
    at_best_k = [p["scale"] for p in past if p["k"] == past[0]["k"]]
    assert at_best_k == [13.0, 20.0, 32.0, 50.0]
    assert {p["scale"] for p in past if p["k"] != past[0]["k"]} == {50.0}
    # the best point of the search, whatever its stage, has its own channel set tried on the whole ladder
    first = min(default.scores["sweep"], key=lambda p: p["loss"])
    tried = {p["scale"] for p in wide.scores["sweep"] if p["channels"] == first["channels"]}
    assert tried >= set(finder_search.wide_scales(50))
    assert (default.scores["max_scale"], wide.scores["max_scale"]) == (8, 50)
    assert "max_scale" not in default.spec.to_dict()["provenance"]
    assert wide.spec.to_dict()["provenance"]["max_scale"] == 50
    with pytest.raises(FinderError, match="max_scale: 7"):
        find(model, calibration, max_scale=7, progress=False)


def test_without_validation_documents_the_ladder_climbs_the_best_pair_alone():
    model = trained_model()
    calibration = documents(32, seed=1, source="calibration")
    with use_fast_scan():
        plant(model, 0, "mixer_out", 4, 0.02, seed=8)
        # method outlier validates 6 pairs by default: with no validation documents none can be chosen but
        # the calibration's best, so only its pair goes up the ladder
        alone = find(model, calibration, max_scale=50, progress=False)
        checked = find(
            model, calibration, max_scale=50, validation=documents(16, 3, "validation"), progress=False
        )

    def laddered(result) -> set[tuple]:  # the pairs the ladder evaluated (it skips points already tried)
        return {(p["layer"], p["site"]) for p in result.scores["sweep"] if p["stage"] == "ladder"}

    best = min(alone.scores["sweep"], key=lambda p: p["loss"])
    assert laddered(alone) <= {(best["layer"], best["site"])}
    # with them, the pairs they may choose from
    assert len(laddered(checked) - {(best["layer"], best["site"])}) >= 2


class _RecordingSweep:
    """A stand-in for the search's sweep: a fixed curve, and the configurations asked for."""

    def __init__(self, curve):
        self.curve = curve
        self.asked = []

    def run_channels(self, pair, direction, channels, scale, stage):
        self.asked.append((pair, direction, tuple(channels), scale, stage))


def _point(layer, site, channels, scale, loss, stage, direction="amplify"):
    return {
        "layer": layer,
        "site": site,
        "channels": channels,
        "k": len(channels),
        "scale": scale,
        "loss": loss,
        "stage": stage,
        "direction": direction,
    }


def test_the_ladder_takes_each_top_pairs_best_set_from_any_stage():
    curve = [
        _point(1, "B", [0, 1, 2, 3], 3.0, 0.90, "sweep"),
        _point(1, "B", [5, 9, 11], 8.0, 0.40, "blocks"),  # pair (1, B)'s best: the block screen's union
        _point(2, "delta", [7], 8.0, 0.50, "outliers"),
        _point(0, "C", [4], 0.0, 0.45, "sweep", direction="damp"),  # a damping point: no ladder
        _point(3, "x", [1, 2], 5.0, 0.10, "descend"),  # descents keep their own scales
        _point(2, "gate", [3], 8.0, 0.60, "screen"),  # the fourth pair: beyond n = 3
        _point(1, "D", [3], 8.0, 2.00, "screen"),  # no gain over the unsteered loss (1.0)
    ]
    sweep = _RecordingSweep(curve)
    finder_search._ladder(sweep, 1.0, 3, (13.0, 50.0), finder_search._Progress(False))
    assert sweep.asked == [
        ((1, "B"), "amplify", (5, 9, 11), 13.0, "ladder"),
        ((1, "B"), "amplify", (5, 9, 11), 50.0, "ladder"),
        ((2, "delta"), "amplify", (7,), 13.0, "ladder"),
        ((2, "delta"), "amplify", (7,), 50.0, "ladder"),
    ]
