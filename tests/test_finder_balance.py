"""find --balance (issue 22): on Mamba-2 the gate channel sizes are read as the gated product y·SiLU(z)
the gated norm normalises, and the ssm_out (y) and gate sizes are set against the line of log size on the
log norm of what reads them. So a damped z shows (steering's tensor there is y, which it leaves as it is),
and a channel that arrives weak where it is read strongly stands out where a naturally quiet one, read
weakly, does not."""

from __future__ import annotations

import pytest
import torch
from tiny import make_model

from lm_eval_ssmsteer.finder import FinderError, find
from lm_eval_ssmsteer.finder.data import CalibrationData
from lm_eval_ssmsteer.finder.magnitude import (
    Outliers,
    balanced_size,
    channel_rms,
    log_size,
    low_outliers,
    reading_norms,
    restoring_scale,
    robust_line,
)
from lm_eval_ssmsteer.finder.search import outlier_pairs
from lm_eval_ssmsteer.interpret.capture import capture_layers
from lm_eval_ssmsteer.mamba.arch import describe_model, mamba_mixers
from lm_eval_ssmsteer.mamba.mixer_math import mixer_internals
from lm_eval_ssmsteer.studies.damping import plant

LAYER = 1


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(seed))


def _rms(model, layer: int, gated: bool) -> dict:
    pairs = [(layer, "ssm_out"), (layer, "gate"), (layer, "delta")]
    arch = describe_model(model)
    return channel_rms(model, [(_ids(), None)], pairs, arch.site_width, gated=(layer,) if gated else ())


@pytest.mark.parametrize("arch", ["mamba2", "bamba"])
def test_the_gated_read_is_the_rms_of_the_product_the_gated_norm_normalises(arch):
    model = make_model(arch)
    layer = sorted(mamba_mixers(model))[-1]
    captured = capture_layers(model, _ids(), [layer])
    with torch.no_grad():
        gated = mixer_internals(mamba_mixers(model)[layer], captured[layer].mixer_input).gated
    expected = gated.float().square().mean(dim=(0, 1)).sqrt()
    got = _rms(model, layer, gated=True)
    assert got[(layer, "gate")].tolist() == pytest.approx(expected.tolist(), rel=1e-4)
    plain = _rms(model, layer, gated=False)
    for site in ("ssm_out", "delta"):  # the other pairs as they were: ssm_out is y
        assert plain[(layer, site)].tolist() == got[(layer, site)].tolist(), site
    assert not torch.allclose(plain[(layer, "gate")], got[(layer, "gate")])  # y alone is another read


def test_a_gate_plant_shows_in_the_gated_product_and_not_in_y():
    intact = make_model("mamba2")
    damaged = make_model("mamba2")
    channels = plant(damaged, LAYER, "gate", 4, 0.05, seed=3)  # z's rows of in_proj: SiLU(0.05 z)
    others = [c for c in range(describe_model(intact).site_width("gate")) if c not in channels]
    y_ratio = (
        _rms(damaged, LAYER, gated=False)[(LAYER, "gate")] / _rms(intact, LAYER, gated=False)[(LAYER, "gate")]
    )
    assert y_ratio.tolist() == pytest.approx([1.0] * y_ratio.numel(), rel=1e-5)  # y does not see it
    ratio = (
        _rms(damaged, LAYER, gated=True)[(LAYER, "gate")] / _rms(intact, LAYER, gated=True)[(LAYER, "gate")]
    )
    assert float(ratio[channels].max()) < 0.3, ratio[channels]
    assert ratio[others].tolist() == pytest.approx([1.0] * len(others), rel=1e-5)
    # and an ssm_out plant (steering's own factor on y) shows in both reads at exactly its scale
    hooked = make_model("mamba2")
    planted = plant(hooked, LAYER, "ssm_out", 4, 0.1, seed=3)
    damaged_rms, intact_rms = _rms(hooked, LAYER, gated=True), _rms(intact, LAYER, gated=True)
    for site in ("ssm_out", "gate"):
        ratio = damaged_rms[(LAYER, site)] / intact_rms[(LAYER, site)]
        assert ratio[planted].tolist() == pytest.approx([0.1] * 4, rel=1e-4), site


def test_robust_line_fits_the_bulk_and_leaves_the_points_below_it_out():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, generator=g)
    y = 0.6 * x + 2.0 + 0.1 * torch.randn(200, generator=g)
    y[[3, 50, 120]] -= 4.0
    slope, residual, spread = robust_line(x, y)
    assert slope == pytest.approx(0.6, abs=0.03)
    assert 0.07 < spread < 0.13
    assert sorted(int(c) for c in torch.nonzero(residual < -3 * spread).flatten()) == [3, 50, 120]
    assert float(residual.median()) == pytest.approx(0.0, abs=1e-12)


def test_balanced_size_flags_a_damped_channel_and_not_a_naturally_quiet_one():
    g = torch.Generator().manual_seed(1)
    reading = torch.exp(0.8 * torch.randn(256, generator=g))  # column norms
    quiet = [11, 60, 150, 151, 240]
    reading[quiet] *= 0.01  # a few channels the next map hardly reads
    size = reading.pow(0.8) * torch.exp(0.1 * torch.randn(256, generator=g))  # sizes follow what reads them
    assert set(quiet) <= set(low_outliers(size).channels)  # the plain read calls them outliers
    balanced = low_outliers(balanced_size(size, reading)).channels
    assert not set(quiet) & set(balanced) and len(balanced) <= 1  # against their reading they are not
    damped = size.clone()
    hit = [7, 99, 200]
    damped[hit] *= 0.02
    balanced = balanced_size(damped, reading)
    found = low_outliers(balanced)
    assert sorted(found.channels[:3]) == hit  # the three most extreme, far below the chance ones
    assert 35 < restoring_scale(log_size(balanced), hit) < 70  # about 1/0.02 brings them back to the line


def test_reading_norms_are_the_out_proj_columns_times_the_gated_norms_weight():
    model = make_model("mamba2")
    mixer = mamba_mixers(model)[LAYER]
    with torch.no_grad():
        mixer.norm.weight.copy_(torch.linspace(-2.0, 2.0, mixer.norm.weight.numel()))
    got = reading_norms(model, [LAYER])[LAYER]
    expected = mixer.out_proj.weight.double().norm(dim=0) * mixer.norm.weight.double().abs()
    assert got.tolist() == pytest.approx(expected.tolist(), rel=1e-12)
    mamba1 = make_model("mamba")
    column = mamba_mixers(mamba1)[LAYER].out_proj.weight.double().norm(dim=0)
    assert reading_norms(mamba1, [LAYER])[LAYER].tolist() == pytest.approx(column.tolist(), rel=1e-12)


def _data(seed: int = 0) -> CalibrationData:
    ids = torch.randint(3, 250, (8, 24), generator=torch.Generator().manual_seed(seed))
    return CalibrationData.from_ids([(row.tolist(), 21) for row in ids], "random")


def test_find_checks_balance_records_it_and_leaves_mamba1_as_it_was():
    with pytest.raises(FinderError, match="balance: on with method 'causal'; allowed with method outlier"):
        find(make_model("mamba2"), _data(), method="causal", balance=True, progress=False)
    with pytest.raises(FinderError, match="balance: 1; allowed: true or false"):
        find(make_model("mamba2"), _data(), balance=1, progress=False)
    on = find(make_model("mamba2"), _data(), balance=True, progress=False)
    off = find(make_model("mamba2"), _data(), progress=False)
    assert on.scores["balance"] is True and off.scores["balance"] is False
    assert on.spec.provenance["balance"] is True and "balance" not in off.spec.provenance
    # Mamba-1 has no gated norm: its sizes, and so the whole search, are the same with balance on
    a = find(make_model("mamba"), _data(), balance=True, progress=False)
    b = find(make_model("mamba"), _data(), progress=False)
    assert a.scores["sweep"] == b.scores["sweep"] and a.spec.interventions == b.spec.interventions


def test_outlier_pairs_takes_the_most_extreme_once_a_twin_and_skips_what_is_chosen():
    def outliers(z: float, channels: list[int]) -> Outliers:
        return Outliers(channels, [-z] * len(channels), channels, 10.0)

    found = {
        (0, "C"): outliers(9.0, [1]),
        (0, "ssm_out"): outliers(8.0, [5, 6]),
        (0, "gate"): outliers(8.0, [5, 6]),  # its twin: the same channels
        (1, "gate"): outliers(7.0, [2]),
        (1, "ssm_out"): outliers(6.0, [3]),
        (2, "B"): outliers(0.0, []),  # no outlier: never chosen
    }
    assert outlier_pairs(found, 2) == [(0, "C"), (0, "ssm_out")]
    assert outlier_pairs(found, 9) == [(0, "C"), (0, "ssm_out"), (1, "gate"), (1, "ssm_out")]
    balanced = frozenset(p for p in found if p[1] in ("ssm_out", "gate"))
    # the balance screen's pairs: of the balanced ones, none chosen already nor a twin of one
    assert outlier_pairs(found, 2, [(0, "C"), (0, "ssm_out")], balanced) == [(1, "gate"), (1, "ssm_out")]
    assert outlier_pairs(found, 1, [(0, "gate")], balanced) == [(1, "gate")]
