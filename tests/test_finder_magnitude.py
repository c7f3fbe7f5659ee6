"""Channel size (``finder.magnitude``) and method ``outlier`` (issue 22): the observer factors read, through
the steering hooks, the very tensor each site's steering multiplies, so a plant that scales that tensor
by 0.1 shows as a ratio of exactly 0.1 on its channels and 1 on the others; and on the trained lag-copy
model a saturating mixer_out plant (x0.02) that ``causal`` misses is found and undone by ``outlier``."""

from __future__ import annotations

import pytest
import torch
from test_finder_planted import documents, trained_model
from tiny import make_model
from tqdm.auto import tqdm

from lm_eval_ssmsteer.finder import find
from lm_eval_ssmsteer.finder import search as finder_search
from lm_eval_ssmsteer.finder.magnitude import channel_rms, channel_size, low_outliers
from lm_eval_ssmsteer.finder.methods import evaluate
from lm_eval_ssmsteer.mamba.arch import describe_model, mamba_mixers
from lm_eval_ssmsteer.mamba.fastscan import use_fast_scan
from lm_eval_ssmsteer.mamba.sites import SITES
from lm_eval_ssmsteer.studies.damping import plant

LAYER, COUNT, DAMPING = 1, 2, 0.1

# (architecture, site) where the plant scales exactly the tensor steering multiplies: out_proj rows
# (mixer_out), the block output (residual, a hook), x_proj rows without a norm after them (Mamba-1 B, C),
# y before the gated norm (Mamba-2 ssm_out, a hook), and Mamba-1's ssm_out, whose plant scales out_proj
# columns: its channel size (RMS x column norm) carries the scale
EXACT = [
    ("mamba", "mixer_out"),
    ("mamba", "residual"),
    ("mamba", "B"),
    ("mamba", "C"),
    ("mamba", "ssm_out"),
    ("falcon_mamba", "mixer_out"),
    ("mamba2", "mixer_out"),
    ("mamba2", "residual"),
    ("mamba2", "ssm_out"),
    ("bamba", "mixer_out"),
    ("bamba", "ssm_out"),
]


def _ids(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ids = torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(seed))
    return [(ids, ids.clone())]


def _sizes(model, layer: int, site: str) -> torch.Tensor:
    arch = describe_model(model)
    return channel_size(model, channel_rms(model, _ids(), [(layer, site)], arch.site_width))[(layer, site)]


@pytest.mark.parametrize(("arch", "site"), EXACT)
def test_a_plant_that_scales_the_steered_tensor_shows_as_that_ratio(arch, site):
    layer = sorted(mamba_mixers(make_model(arch)))[-1] if arch == "bamba" else LAYER
    intact = _sizes(make_model(arch), layer, site)
    damaged_model = make_model(arch)
    channels = plant(damaged_model, layer, site, COUNT, DAMPING, seed=3)
    ratio = _sizes(damaged_model, layer, site) / intact
    others = [c for c in range(ratio.numel()) if c not in channels]
    assert ratio[channels].tolist() == pytest.approx([DAMPING] * COUNT, rel=1e-4), (arch, site)
    assert ratio[others].tolist() == pytest.approx([1.0] * len(others), rel=1e-4), (arch, site)


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_a_delta_plant_makes_those_channels_smaller_and_leaves_the_rest(arch):
    width = describe_model(make_model(arch)).site_width("delta")
    count = 1 if width < 8 else COUNT
    intact = _sizes(make_model(arch), LAYER, "delta")
    damaged_model = make_model(arch)
    channels = plant(damaged_model, LAYER, "delta", count, DAMPING, seed=3)
    ratio = _sizes(damaged_model, LAYER, "delta") / intact
    others = [c for c in range(width) if c not in channels]
    assert float(ratio[channels].max()) < 0.5, ratio  # Δ at zero input is x0.1; the input moves it
    assert ratio[others].tolist() == pytest.approx([1.0] * len(others), rel=1e-5)


def test_channel_rms_of_mixer_out_is_that_of_the_mixer_output():
    model = make_model("mamba")
    batches = _ids(1)
    seen = []
    handle = mamba_mixers(model)[LAYER].register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            model(batches[0][0], use_cache=False)
    finally:
        handle.remove()
    expected = seen[0].float().square().mean(dim=(0, 1)).sqrt()
    got = channel_rms(model, batches, [(LAYER, "mixer_out")], describe_model(model).site_width)
    assert got[(LAYER, "mixer_out")].tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_low_outliers_are_the_channels_far_below_the_median():
    rms = torch.exp(torch.randn(64, generator=torch.Generator().manual_seed(0)) * 0.3)
    rms[[5, 40, 17]] *= torch.tensor([0.01, 0.02, 0.05])
    found = low_outliers(rms)
    assert found.channels == [5, 40, 17]  # smallest first
    assert found.order[:3] == [5, 40, 17] and sorted(found.order) == list(range(64))
    assert 20 < found.restore < 80  # the geometric mean of 1/0.01, 1/0.02, 1/0.05 is about 37
    assert all(z < -3 for z in found.z) and found.score == -found.z[0]
    assert low_outliers(torch.ones(16)).channels == []
    assert low_outliers(rms[[c for c in range(64) if c not in (5, 40, 17)]]).channels == []


def test_outlier_finds_and_undoes_a_saturating_plant_that_causal_misses():
    model = trained_model()
    test = documents(64, seed=2, source="test").batches()
    with use_fast_scan():
        intact = evaluate(model, test)
        channels = plant(model, 0, "mixer_out", 4, 0.02, seed=8)
        damaged = evaluate(model, test)
        assert damaged.loss > 5 * intact.loss, (intact, damaged)
        calibration = documents(32, seed=1, source="calibration")
        found = {"causal": find(model, calibration, method="causal", progress=False).spec}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(finder_search, "tqdm", _RecordedBar)
            found["outlier"] = find(model, calibration).spec  # the default method, with its bars

        def win_back(spec) -> float:
            return (damaged.loss - evaluate(model, test, spec).loss) / (damaged.loss - intact.loss)

        outlier = found["outlier"].interventions[0]
        assert (outlier.layers, outlier.site, sorted(outlier.channels)) == ((0,), "mixer_out", channels)
        assert outlier.scale > 8  # past the sweep's largest scale: x8 undoes only 0.16 of a x0.02 plant
        assert win_back(found["outlier"]) >= 0.95 > 0.5 > win_back(found["causal"])
    bars = {bar.desc: bar for bar in _RecordedBar.made}
    assert list(bars)[:6] == [
        f"find: {p}"
        for p in ("unsteered", "attribution", "channel size", "layer inputs", "screen", "outlier screen")
    ]
    assert bars["find: channel size"].total == len(calibration.batches())
    for bar in bars.values():  # each total fixed when its phase starts, one update per item
        assert bar.total == bar.first_total == bar.n > 0, bar.desc


class _RecordedBar(tqdm):
    made: list[_RecordedBar] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.first_total = self.total
        _RecordedBar.made.append(self)


def test_the_gpu_benchmark_runs_its_checks_on_the_cpu_at_a_tiny_shape(capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import magnitude_gpu

    args = ["--device", "cpu", "--shape", "tiny", "--dtypes", "fp32", "--archs", "mamba", "mamba2", "jamba"]
    assert magnitude_gpu.main(args) == 0
    out = capsys.readouterr().out
    assert "| jamba | fp32 | B | yes | 0.1000–0.1000 |" in out and "0 failures" in out


def test_steepest_takes_the_most_negative_single_channel_and_skips_twins_and_the_shortlist():
    grads = {
        (0, "delta"): torch.tensor([0.1, -0.5, 0.0]),  # steepest
        (0, "gate"): torch.tensor([-0.3, 0.2]),
        (0, "ssm_out"): torch.tensor([-0.3, 0.2]),  # gate's twin (same layer, same gradients)
        (1, "gate"): torch.tensor([-0.3, 0.2]),  # same values at another layer: not a twin
        (1, "B"): torch.tensor([-0.4, 0.0]),  # already screened by attribution
        (2, "C"): torch.tensor([0.0, 0.1]),  # nothing to gain by amplifying
    }
    steep = finder_search._steepest(grads, 5, skip=[(1, "B")])
    assert steep[0] == (0, "delta") and (1, "B") not in steep and (2, "C") not in steep
    assert len({(0, "gate"), (0, "ssm_out")} & set(steep)) == 1 and (1, "gate") in steep
    assert finder_search._steepest(grads, 1, skip=[]) == [(0, "delta")]


def test_outlier_screens_the_steepest_pairs_at_x3_and_x8_and_causal_is_unchanged():
    model = trained_model()
    calibration = documents(16, seed=1, source="calibration")
    with use_fast_scan():
        results = {m: find(model, calibration, method=m, progress=False) for m in ("outlier", "causal")}
    scores = results["outlier"].scores
    gradient_rows = [row for row in scores["screened"] if row["source"] == "gradient"]
    attribution_rows = [row for row in scores["screened"] if row["source"] == "attribution"]
    assert gradient_rows and attribution_rows
    screened_by_attribution = {(row["layer"], row["site"]) for row in attribution_rows}
    for row in gradient_rows:
        pair = (row["layer"], row["site"])
        assert pair not in screened_by_attribution
        grad = torch.tensor(scores["raw"]["grad"][f"{pair[0]}/{pair[1]}"])
        assert row["channels"] == grad.argsort().tolist()[: row["k"]]  # steepest first
        assert grad[row["channels"][0]] < 0
        points = {(p["k"], p["scale"]) for p in scores["sweep"] if (p["layer"], p["site"]) == pair}
        assert {
            (k, s) for k in finder_search._screen_counts(describe_model(model), pair) for s in (3.0, 8.0)
        } <= points
    causal = results["causal"].scores
    assert all(row["source"] == "attribution" for row in causal["screened"])
    assert not any(p["stage"] == "screen" and p["scale"] == 8.0 for p in causal["sweep"])


def test_steep_channel_orders():
    grad = torch.tensor([-1.0, -4.0, 0.5, -2.0])
    size = torch.tensor([1.0, 8.0, 2.0, 0.5])
    assert finder_search._steep_channels(grad, size, "gradient") == [1, 3, 0, 2]  # most negative first
    assert finder_search._steep_channels(grad, size, "size") == [3, 0, 2, 1]  # smallest first
    assert finder_search._steep_channels(grad, size, "ratio") == [3, 0, 1, 2]  # -4, -1, -0.5, 0.25


def test_outlier_orders_a_steep_pairs_channels_by_size_when_asked_and_records_it():
    model = trained_model()
    calibration = documents(16, seed=1, source="calibration")
    with use_fast_scan():
        result = find(model, calibration, method="outlier", steep_order="size", progress=False)
        batches = list(calibration.batches())
        arch = describe_model(model)
        pairs = [(layer, site) for layer in range(arch.n_layers) for site in SITES]
        sizes = channel_size(model, channel_rms(model, batches, pairs, arch.site_width))
    scores = result.scores
    assert scores["steep_order"] == "size"
    assert result.spec.to_dict()["provenance"]["steep_order"] == "size"
    rows = [row for row in scores["screened"] if row["source"] == "gradient"]
    assert rows
    for row in rows:
        order = sizes[(row["layer"], row["site"])].argsort().tolist()
        assert row["channels"] == order[: row["k"]]  # smallest first, not steepest first
    with pytest.raises(Exception, match="steep_order"):
        find(model, calibration, method="outlier", steep_order="largest", progress=False)


def test_other_counts_are_the_best_pairs_best_point_at_each_other_channel_count():
    def point(layer, site, k, loss):
        return {"layer": layer, "site": site, "k": k, "loss": loss, "channels": list(range(k)), "scale": 8.0}

    curve = [
        point(3, "C", 8, 0.10),  # the best point
        point(3, "C", 16, 0.30),
        point(3, "C", 16, 0.20),  # the better of the two 16-channel points
        point(3, "C", 4, 0.25),
        point(3, "C", 2, 0.90),  # no better than the unsteered model
        point(2, "B", 4, 0.15),  # another pair
    ]
    others = finder_search._other_counts(curve, curve[0], base_loss=0.5, n=4)
    assert [(p["k"], p["loss"]) for p in others] == [(16, 0.20), (4, 0.25)]
    assert finder_search._other_counts(curve, curve[0], base_loss=0.5, n=1) == [curve[2]]


def test_outlier_validates_other_channel_counts_of_the_best_pair():
    model = trained_model()
    with use_fast_scan():
        channels = plant(model, 0, "mixer_out", 4, 0.02, seed=8)
        result = find(
            model,
            documents(16, seed=1, source="calibration"),
            validation=documents(8, 3, "validation"),
            validate_top=1,  # one pair: its other channel counts are what is validated
        )
    candidates = result.scores["validation"]["candidates"]
    best = min(result.scores["sweep"], key=lambda point: point["loss"])
    counts = {c["k"] for c in candidates if (c["layer"], c["site"]) == (best["layer"], best["site"])}
    assert len(counts) > 1 and best["k"] in counts  # the count, too, was chosen on the validation documents
    assert len(candidates) <= 1 + finder_search.VALIDATE_COUNTS
    # the best point, unless another count is better on the validation documents and gains more
    recounted = [
        c for c in candidates[1:] if c["decision"] == "better" and candidates[0]["decision"] != "worse"
    ]
    top = max(recounted + candidates[:1], key=lambda c: c["loss_decrease"])
    chosen = result.spec.interventions[0]
    assert (chosen.layers[0], chosen.site, len(chosen.channels), chosen.scale) == (
        top["layer"],
        top["site"],
        top["k"],
        top["scale"],
    )
    assert (chosen.layers[0], chosen.site) == (0, "mixer_out") and set(chosen.channels) & set(channels)


def test_descend_reads_a_saturated_plant_far_from_scale_one_and_its_points_compete():
    model = trained_model()
    calibration = documents(32, seed=1, source="calibration")
    with use_fast_scan():
        channels = plant(model, 0, "mixer_out", 4, 0.02, seed=8)
        batches = list(calibration.batches())
        kept, scales = finder_search._descend(
            model, batches, describe_model(model), (0, "mixer_out"), 20, None, 32, lambda *a: None
        )
        result = find(model, calibration, descend=20, progress=False)
    # x0.02 is flat at scale 1 (what the consistency score reads); the descent walks out of it
    assert len(kept) >= 3 and set(kept) <= set(channels), (kept, channels)
    assert min(scales) > 8 and scales == sorted(scales, reverse=True)
    scores = result.scores
    assert scores["descend"] == 20 and result.spec.to_dict()["provenance"]["descend"] == 20
    descended = scores["raw"]["descend"]
    assert "0/mixer_out" in descended and len(descended) <= finder_search.DESCEND_PAIRS
    for key, row in descended.items():
        layer, site = key.split("/")
        points = [
            p
            for p in scores["sweep"]
            if p["stage"] == "descend" and (p["layer"], p["site"]) == (int(layer), site)
        ]
        assert {p["scale"] for p in points} == (
            set(finder_search.DESCEND_SCALES) if row["channels"] else set()
        )
        assert all(p["channels"] == sorted(row["channels"]) for p in points)
    with pytest.raises(Exception, match="descend: -1"):
        find(model, calibration, descend=-1, progress=False)


def test_a_descents_point_competes_with_the_sweeps_best_and_does_not_hide_it():
    def point(stage, layer, site, k, loss):
        return {"stage": stage, "layer": layer, "site": site, "k": k, "loss": loss, "scale": 5.0}

    curve = [
        point("sweep", 2, "delta", 2, 0.001),  # the lowest calibration loss
        point("sweep", 1, "ssm_out", 8, 0.35),  # the sweep's best point of the pair a descent walked
        point("descend", 1, "ssm_out", 4, 0.006),  # that descent's best point
        point("descend", 1, "ssm_out", 4, 0.10),
        point("descend", 2, "delta", 1, 0.60),  # no better than the unsteered model
    ]
    # the sweep's best pair, then each descended pair's best descent point, whatever its calibration rank
    assert finder_search._validation_pool(curve, base_loss=0.5, n=1) == [curve[0], curve[2]]
    assert finder_search._validation_pool(curve, base_loss=0.5, n=2) == [curve[0], curve[1], curve[2]]
    # no descent: the pool is the best point of each pair, as without the option
    plain = curve[:2]
    assert finder_search._validation_pool(plain, 0.5, 2) == finder_search._best_per_pair(plain, 0.5, 2)
    assert finder_search._validation_pool(curve[4:], 0.5, 1) == []


def test_blocks_cut_every_channel_once_in_a_seeded_order():
    for width, n in ((448, 8), (16, 8), (16, 16), (5, 8), (10, 3)):
        cut = finder_search._blocks(width, n)
        flat = [c for block in cut for c in block]
        assert sorted(flat) == list(range(width)) and len(cut) <= min(n, width)
        assert all(block == sorted(block) for block in cut)
        assert len({len(block) for block in cut[:-1]}) <= 1 and len(cut[-1]) <= len(cut[0])
        assert finder_search._blocks(width, n) == cut  # seeded: the same blocks every run
    assert finder_search._blocks(448, 8) != [list(range(i, i + 56)) for i in range(0, 448, 56)]


def test_block_screen_scores_every_block_of_every_pair_and_refines_the_best_two():
    model = trained_model()
    calibration = documents(32, seed=1, source="calibration")
    sites = ["mixer_out", "delta", "B"]
    with use_fast_scan():
        channels = plant(model, 0, "mixer_out", 4, 0.02, seed=8)
        result = find(model, calibration, sites=sites, blocks=8, progress=False)
    scores = result.scores
    assert scores["blocks"] == 8 and result.spec.to_dict()["provenance"]["blocks"] == 8
    raw = scores["raw"]["blocks"]
    arch = describe_model(model)
    pairs = [(layer, site) for layer in arch.steerable_layers for site in sites]
    assert set(raw["best_loss"]) == {f"{p[0]}/{p[1]}" for p in pairs}
    # each configuration is evaluated once: a block another screen tried first keeps that stage's name
    at_x8 = {
        (p["layer"], p["site"], tuple(p["channels"])): p["loss"]
        for p in scores["sweep"]
        if p["scale"] == finder_search.PROBE_SCALE
    }
    assert any(p["stage"] == "block screen" for p in scores["sweep"])
    for layer, site in pairs:
        blocks = finder_search._blocks(arch.site_width(site), 8)
        losses = [at_x8[(layer, site, tuple(block))] for block in blocks]
        assert raw["best_loss"][f"{layer}/{site}"] == min(losses)
    best_two = list(raw["best_loss"])[: finder_search.BLOCK_REFINE]
    assert list(raw["best_loss"].values()) == sorted(raw["best_loss"].values())
    rows = [r for r in scores["screened"] if r["source"] == "blocks"]
    assert [f"{r['layer']}/{r['site']}" for r in rows] == [k for k in best_two if k in raw["refined"]]
    for row in rows:  # a refined row is never worse than its pair's best block, and holds its channels
        key = f"{row['layer']}/{row['site']}"
        assert row["loss"] <= raw["best_loss"][key] and row["k"] == len(row["channels"])
        assert row["channels"] == raw["refined"][key]["channels"]
    # the outlier screen still finds this plant; the block rows only compete beside it
    chosen = result.spec.interventions[0]
    assert (chosen.layers[0], chosen.site) == (0, "mixer_out") and set(chosen.channels) == set(channels)
    with pytest.raises(Exception, match="blocks: -1"):
        find(model, calibration, blocks=-1, progress=False)
    with pytest.raises(Exception, match="allowed with methods causal and outlier"):
        find(model, calibration, method="attribution", blocks=8, progress=False)


def test_narrow_counts_are_the_powers_of_two_up_to_a_quarter_and_the_widest_gap():
    sizes = torch.ones(16)
    sizes[[2, 7, 11]] = 0.01  # three tiny channels, then a step: 3 joins 1, 2, 4
    assert finder_search.narrow_counts(sizes.log()) == [1, 2, 3, 4]
    sizes[[0, 5, 9]] = 0.01  # six: the step lies past a quarter of the site, the gaps before it are 0
    assert finder_search.narrow_counts(sizes.log()) == [1, 2, 4]
    assert finder_search.narrow_counts(torch.zeros(3)) == [1]  # a quarter of 3 is below 1: one channel
    assert finder_search.narrow_counts(torch.arange(64.0)) == [1, 2, 4, 8, 16]


def test_narrow_screen_restores_the_smallest_channels_of_a_narrow_site_that_are_not_outliers():
    model = trained_model()
    calibration = documents(32, seed=1, source="calibration")
    test = documents(64, seed=2, source="test").batches()
    sites = ["delta", "B", "C"]
    arch = describe_model(model)
    with use_fast_scan():
        intact = evaluate(model, test)
        channels = plant(model, 1, "C", 2, 0.05, seed=4)  # 2 of C's 8 state channels x0.05
        damaged = evaluate(model, test)
        pairs = [(layer, site) for layer in arch.steerable_layers for site in sites]
        sizes = channel_size(model, channel_rms(model, calibration.batches(), pairs, arch.site_width))
        # the two are the pair's smallest channels but no low outliers: 8 channels, a wide natural spread
        assert sorted(low_outliers(sizes[(1, "C")]).order[:2]) == channels
        assert low_outliers(sizes[(1, "C")]).channels == []
        off = find(model, calibration, sites=sites, narrow=0, progress=False)  # the default before
        default = find(model, calibration, sites=sites, progress=False)  # width 64, floor 4
        win_back = {
            name: (damaged.loss - evaluate(model, test, r.spec).loss) / (damaged.loss - intact.loss)
            for name, r in (("off", off), ("default", default))
        }
    assert "narrow" not in off.scores["raw"]
    raw = default.scores["raw"]["narrow"]
    assert (raw["width"], raw["floor"], default.scores["narrow"], default.scores["narrow_floor"]) == (
        64,
        4,
        64,
        4,
    )
    # every pair at most 64 wide (delta, B and C of each layer) is planned, B and C although they steer alike;
    # a pair is screened only where restoring some of its smallest channels takes x4 or more
    narrow_pairs = [p for p in pairs if arch.site_width(p[1]) <= 64]
    assert raw["pairs"] == len(narrow_pairs) == len(pairs)

    def deepest(pair):  # the largest restoring scale among the counts the screen plans for the pair
        return max(restore for _, restore in finder_search.narrow_plan(sizes[pair]))

    screened = {p for p in narrow_pairs if deepest(p) >= 4}
    assert (1, "C") in screened and set(raw["best"]) == {f"{p[0]}/{p[1]}" for p in screened}
    assert len(screened) < len(narrow_pairs)  # the floor leaves some pairs out: that is what it saves
    rows = {(r["layer"], r["site"]): r for r in default.scores["screened"] if r["source"] == "narrow"}
    assert set(rows) == screened
    row = rows[(1, "C")]
    assert sorted(row["channels"]) == channels and row["scale"] > 8  # restored to the median: about x1/0.05
    point = ("narrow screen", 1, "C", channels, row["scale"])
    assert point in [
        (p["stage"], p["layer"], p["site"], p["channels"], p["scale"]) for p in default.scores["sweep"]
    ]
    assert all(p["scale"] >= 4 for p in default.scores["sweep"] if p["stage"] == "narrow screen")
    found = default.spec.interventions[0]
    assert (found.layers[0], found.site, sorted(found.channels)) == (1, "C", channels) and found.scale > 8
    # measured: without the screen find writes the same channels at x8 and wins back 0.60; with it x15.4, 0.94
    assert win_back["default"] >= 0.9 > win_back["off"] + 0.2, win_back
    provenance = default.spec.provenance
    assert provenance["narrow"] == {"width": 64, "floor": 4.0} and "narrow" not in off.spec.provenance
    with pytest.raises(Exception, match="narrow_floor: -1"):
        find(model, calibration, narrow_floor=-1, progress=False)
    with pytest.raises(Exception, match="narrow: -1"):
        find(model, calibration, narrow=-1, progress=False)
    with pytest.raises(Exception, match="allowed with method outlier only"):
        find(model, calibration, method="causal", narrow=16, progress=False)


def test_grow_adds_the_damped_channels_the_gradient_at_the_repaired_point_asks_for():
    # a x0.1 plant of 8 mixer_out channels, and a point that has undone one of them (what the sweep finds on
    # ref-mamba1's wide-site plants: docs/finder.md, "Grow"): the gradient there, over the channel sizes,
    # names the other seven, and nothing else
    model = trained_model()
    calibration = documents(32, seed=1, source="calibration")
    pair = (0, "mixer_out")
    with use_fast_scan():
        intact = evaluate(model, calibration.batches()).loss
        channels = plant(model, *pair, 8, 0.1, seed=8)
        batches = list(calibration.batches())
        arch = describe_model(model)
        sweep = finder_search._Sweep(model, batches, arch, {}, lambda *a: None)
        start = sweep.run_channels(pair, "amplify", channels[:1], 10.0, "sweep")
        sweep.run_channels(pair, "damp", channels[1:3], 0.0, "sweep")  # no point to grow from: damping
        grown = finder_search._grow(
            model, batches, arch, sweep, 3, 32, finder_search._Progress(False), sizes={}
        )
    assert grown["from"] == channels[:1] and grown["scale"] == 10.0
    assert sorted(grown["channels"]) == channels, (grown, channels)
    assert grown["loss"]["end"] < 1.05 * intact < 0.5 * start["loss"]
    assert 1 <= grown["rounds"] <= 3
    grew = [point for point in sweep.curve if point["stage"] == "grow"]
    assert grew and all(set(point["channels"]) > set(channels[:1]) for point in grew)
    assert min(point["loss"] for point in grew) == grown["loss"]["end"]
    assert all(point["scale"] == 10.0 for point in grew)
    # the rounds stop when no addition lowers the loss: the last one grew nothing
    assert len(grew) <= grown["rounds"] * len(finder_search.GROW_COUNTS)


def test_grow_ranks_the_outside_channels_by_gradient_over_size_not_by_gradient():
    # the raw gradient of a damped channel shrinks with it: ranked by it, the same start grows by nothing
    model = trained_model()
    calibration = documents(32, seed=1, source="calibration")
    pair = (0, "mixer_out")
    with use_fast_scan():
        channels = plant(model, *pair, 8, 0.1, seed=8)
        batches = list(calibration.batches())
        arch = describe_model(model)
        ones = {pair: torch.ones(arch.site_width("mixer_out"))}  # every channel the same size
        sweep = finder_search._Sweep(model, batches, arch, {}, lambda *a: None)
        start = sweep.run_channels(pair, "amplify", channels[:1], 10.0, "sweep")
        grown = finder_search._grow(model, batches, arch, sweep, 3, 32, finder_search._Progress(False), ones)
    assert grown["loss"]["end"] > 0.5 * start["loss"], grown
    assert len(set(grown["channels"]) & set(channels)) < len(channels)


def test_grown_is_the_end_point_only_where_grow_added_channels():
    def point(stage, channels, scale=8.0, layer=1, site="ssm_out"):
        return {"stage": stage, "layer": layer, "site": site, "channels": channels, "scale": scale}

    curve = [point("sweep", [3]), point("grow", [3, 5]), point("grow", [1, 3, 5])]
    curve.append(point("grow", [1, 3, 5], 3.0))  # the same channels at another scale
    record = {"layer": 1, "site": "ssm_out", "scale": 8.0, "from": [3], "channels": [5, 3, 1]}
    assert finder_search._grown(curve, record) == [curve[2]]
    assert finder_search._grown(curve, {**record, "channels": [3]}) == []  # grew nothing
    assert finder_search._grown(curve, None) == []  # grow off, or no amplifying point


def test_find_records_grow_and_checks_it():
    model = trained_model()
    calibration = documents(32, seed=1, source="calibration")
    with use_fast_scan():
        plant(model, 0, "mixer_out", 8, 0.1, seed=8)
        result = find(model, calibration, grow=2, progress=False)
        plain = find(model, calibration, grow=0, progress=False)
    scores = result.scores
    assert scores["grow"] == 2 and result.spec.to_dict()["provenance"]["grow"] == 2
    raw = scores["raw"]["grow"]
    best = min((p for p in plain.scores["sweep"] if p["scale"] > 1), key=lambda p: p["loss"])
    assert (raw["layer"], raw["site"], raw["from"]) == (best["layer"], best["site"], best["channels"])
    assert raw["loss"]["end"] <= raw["loss"]["start"] == best["loss"]
    assert result.best.loss <= min(raw["loss"]["end"], plain.best.loss)
    assert plain.scores["grow"] == 0 and "grow" not in plain.scores["raw"]
    assert "grow" not in plain.spec.to_dict()["provenance"]
    # with validation documents: grow's end point is one more candidate there, its steps are none
    with use_fast_scan():
        validation = documents(32, seed=3, source="validation")
        checked = find(model, calibration, grow=2, validation=validation, progress=False)
        unchecked = find(model, calibration, validation=validation, grow=0, progress=False)
    grown = checked.scores["raw"]["grow"]
    assert len(grown["channels"]) > len(grown["from"])  # it grew: the end point is a candidate

    def candidates(result) -> list[tuple]:
        rows = result.scores["validation"]["candidates"]
        return [(c["layer"], c["site"], c["k"], c["scale"]) for c in rows]

    end = (grown["layer"], grown["site"], len(grown["channels"]), grown["scale"])
    assert candidates(checked) == [*candidates(unchecked), end]
    for bad in (-1, 1.5, True):
        with pytest.raises(Exception, match=f"grow: {bad!r}"):
            find(model, calibration, grow=bad, progress=False)
    # method outlier grows 3 rounds unless told otherwise, the other methods not at all
    assert (finder_search.default_grow("outlier"), finder_search.default_grow("causal")) == (3, 0)
