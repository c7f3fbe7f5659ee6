"""`ssmsteer study survey`: the plant list is fixed and covers every site in a design and a held-out set;
every plant damages its channels (and the exact ones are undone by the inverse spec); the summary
leaves plants without damage out of the recovery rates; bad input stops before any model pass; a second
run resumes per plant and per find option."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import HYBRIDS, MAMBA_LAYERS, make_model, save_tiny
from transformers import AutoConfig

from lm_eval_ssmsteer.cli import main
from lm_eval_ssmsteer.loading import load_model
from lm_eval_ssmsteer.mamba.arch import describe_config, describe_model
from lm_eval_ssmsteer.mamba.sites import SITES
from lm_eval_ssmsteer.spec import SteeringSpec
from lm_eval_ssmsteer.studies import survey
from lm_eval_ssmsteer.studies.damping import plant

REF_WIDTHS = {"mixer_out": 224, "residual": 224, "delta": 448, "B": 16, "C": 16, "ssm_out": 448, "gate": 448}


def test_the_plant_list_is_fixed_covers_every_site_and_keeps_a_held_out_set():
    plants = survey.survey_plants(6, REF_WIDTHS)
    assert plants == survey.survey_plants(6, REF_WIDTHS)
    assert len({p.id for p in plants}) == len(plants) == len({p.seed for p in plants})
    for which in survey.SETS:
        sites = survey.GATED_SITES if which == "gated" else SITES
        assert {p.site for p in plants if p.set == which} == set(sites), which
    assert sum(p.set == "design" for p in plants) == sum(p.set == "held-out" for p in plants)
    assert all(p.id[0] == p.set[0].upper() for p in plants)
    assert all(1 <= p.count <= min(32, REF_WIDTHS[p.site]) and p.scale in survey.SCALES for p in plants)
    assert {p.scale for p in plants} == set(survey.SCALES)
    assert len({p.layer for p in plants}) == 6


def test_the_unseen_set_repeats_no_combination_of_the_first_list_and_leaves_that_list_as_it_was():
    plants = survey.survey_plants(6, REF_WIDTHS)
    first = [p for p in plants if p.set in ("design", "held-out")]
    unseen = [p for p in plants if p.set == "unseen"]
    # the design and held-out sets come first, with the seeds they had before the unseen set existed
    assert plants[: len(first)] == first and [p.seed for p in first] == list(range(100, 100 + len(first)))
    assert first[0] == survey.Plant("D01", "design", 1, "mixer_out", 16, 0.02, 100)
    assert len(unseen) == survey.UNSEEN_PER_SITE * len(SITES)
    for site in SITES:
        combos = [(p.layer, p.count, p.scale) for p in unseen if p.site == site]
        assert len(set(combos)) == survey.UNSEEN_PER_SITE, site
        assert not set(combos) & {(p.layer, p.count, p.scale) for p in first if p.site == site}, site
    assert [p.id for p in unseen[:2]] == ["U01", "U02"]


def test_the_fresh_set_repeats_no_earlier_combination_and_leaves_the_earlier_sets_as_they_were():
    plants = survey.survey_plants(6, REF_WIDTHS)
    earlier = [p for p in plants if p.set in ("design", "held-out", "unseen")]
    fresh = [p for p in plants if p.set == "fresh"]
    # appended after the unseen set, whose plants and channel seeds were run before the fresh set existed
    assert plants[: len(earlier)] == earlier and earlier[-1].set == "unseen"
    assert earlier[len(earlier) - len(fresh)] == survey.Plant("U01", "unseen", 5, "mixer_out", 32, 0.02, 142)
    assert earlier[-1] == survey.Plant("U84", "unseen", 4, "gate", 16, 0.1, 225)
    assert len(fresh) == survey.UNSEEN_PER_SITE * len(SITES)
    assert fresh[0] == survey.Plant("F01", "fresh", 4, "mixer_out", 16, 0.05, 226)
    for site in SITES:
        combos = [(p.layer, p.count, p.scale) for p in fresh if p.site == site]
        assert len(set(combos)) == len(combos), site
        assert not set(combos) & {(p.layer, p.count, p.scale) for p in earlier if p.site == site}, site
    # on a model with fewer combinations left the set is smaller, never repeated
    small = [p for p in survey.survey_plants(2, REF_WIDTHS) if p.set == "fresh"]
    assert len(small) < len(fresh)


def test_the_sealed_set_draws_new_channels_and_leaves_the_earlier_sets_as_they_were():
    plants = survey.survey_plants(6, REF_WIDTHS)
    sealed = [p for p in plants if p.set == "sealed"]
    earlier = plants[: plants.index(sealed[0])]
    # appended after the fresh set: every earlier plant and channel seed is the one run before the sealed set
    # existed
    assert earlier[-1].set == "fresh" and earlier[-1].seed == 309 and sealed[0].seed == 310
    assert plants[len(earlier) : len(earlier) + len(sealed)] == sealed
    assert [p.id for p in sealed[:2]] == ["S01", "S02"] and len(sealed) == survey.UNSEEN_PER_SITE * len(SITES)
    # from the whole grid: on a model whose combinations the earlier sets used up, still a full set, each
    # plant's channels a new draw
    small = survey.survey_plants(2, REF_WIDTHS)
    assert not [p for p in small if p.set == "fresh" and p.site == "B"]  # nothing left for the fresh set
    assert len([p for p in small if p.set == "sealed" and p.site == "B"]) == 2 * 2 * 3  # the whole grid
    model, _ = load_model("tiny-random-mamba")
    first = next(p for p in plants if p.site == "delta" and p.set != "sealed")
    again = next(p for p in sealed if p.site == "delta")
    a = plant(model, 0, "delta", 8, 0.5, first.seed)
    b = plant(model, 0, "delta", 8, 0.5, again.seed)
    assert a != b, (a, b)


@pytest.mark.parametrize("site", SITES)
def test_every_plant_changes_the_model_and_the_inverse_spec_undoes_a_pure_scale(site):
    model, _ = load_model("tiny-random-mamba")
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        intact = model(ids, use_cache=False).logits
        channels = plant(model, 1, site, 3, 0.1, seed=4)
        damaged = model(ids, use_cache=False).logits
        assert not torch.allclose(intact, damaged, atol=1e-6), site
        assert channels == sorted(channels) and len(channels) == 3
        from lm_eval_ssmsteer.steering import steer

        with steer(model, SteeringSpec.single(1, site, channels, 10.0)):
            undone = model(ids, use_cache=False).logits
    if site in ("delta", "gate"):  # not a pure scale of the site (bias, SiLU(0.1 z)): closer, not exact
        assert (undone - intact).abs().max() < (damaged - intact).abs().max()
    else:
        torch.testing.assert_close(undone, intact, rtol=1e-4, atol=1e-5)


def test_a_mamba2_ssm_out_plant_is_a_scale_of_y_that_the_inverse_spec_undoes_and_a_weight_plant_is_not():
    """The survey plants Mamba-2's ssm_out where steering's ssm_out acts (y before the gated norm); the
    weight plant (the norm's output channels, ``damp_weights``) is another damage, which ×10 does not undo."""
    from lm_eval_ssmsteer.steering import steer
    from lm_eval_ssmsteer.studies.damping import damp_weights

    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    hooked, weights = make_model("mamba2"), make_model("mamba2")
    with torch.no_grad():
        intact = hooked(ids, use_cache=False).logits
        channels = plant(hooked, 1, "ssm_out", 3, 0.1, seed=4)
        assert damp_weights(weights, 1, "ssm_out", 3, 0.1, seed=4) == channels
        damaged = hooked(ids, use_cache=False).logits
        with steer(hooked, SteeringSpec.single(1, "ssm_out", channels, 0.1)):  # the plant, as a spec
            twice = hooked(ids, use_cache=False).logits
        with steer(hooked, SteeringSpec.single(1, "ssm_out", channels, 10.0)):
            undone = hooked(ids, use_cache=False).logits
        with steer(weights, SteeringSpec.single(1, "ssm_out", channels, 10.0)):
            not_undone = weights(ids, use_cache=False).logits
    assert not torch.allclose(intact, damaged, atol=1e-6)
    assert not torch.allclose(damaged, twice, atol=1e-6)  # the plant's hooks and a spec's compose
    torch.testing.assert_close(undone, intact, rtol=1e-4, atol=1e-5)
    assert (not_undone - intact).abs().max() > 1e-3


def _row(plant_id: str, which: str, damage: float, found: dict) -> dict:
    return {
        "plant": {"id": plant_id, "set": which, "layer": 1, "site": "B", "count": 2, "scale": 0.1, "seed": 0},
        "damage": {"mean": damage, "low": damage, "high": damage},
        "inverse": {"win_back": {"value": 1.0, "low": 1.0, "high": 1.0}},
        "planted_x8": {"win_back": {"value": 1.0, "low": 1.0, "high": 1.0}},
        "finds": {"probe": found},
    }


def _find(layer_site: bool, recall: float, back: float | None, control: float | None) -> dict:
    scored = None if back is None else {"win_back": {"value": back, "low": back, "high": back}}
    random = None if control is None else {"win_back": {"value": control, "low": control, "high": control}}
    return {
        "seconds": 10.0,
        "found": {"layer": 1, "site": "B", "channels": [0, 1], "scale": 8.0 if scored else 1.0},
        "written": scored is not None,
        "rejected": None if scored else "rejected by validation",
        "validation": "better" if scored else "worse",
        "layer_site": layer_site,
        "recall": recall,
        "steered": scored,
        "random": random,
    }


def test_the_summary_leaves_plants_without_damage_out_and_counts_an_identity_as_no_win_back():
    rows = [
        _row("D01", "design", 0.30, _find(True, 1.0, 0.9, 0.1)),
        _row("D02", "design", 0.20, _find(False, 0.0, None, None)),  # identity written: win-back 0
        _row("D03", "design", 0.05, _find(True, 1.0, 1.0, 0.0)),  # below 0.10: reported, not counted
        _row("H01", "held-out", 0.50, _find(True, 0.5, 0.7, -0.2)),
    ]
    summary = survey.summarize(rows, ["probe"], 0.10)
    design = summary["design"]
    assert (design["plants"], design["damaging"]) == (3, 2)
    assert design["finds"]["probe"]["layer_site"] == 0.5 and design["finds"]["probe"]["recall"] == 0.5
    assert design["finds"]["probe"]["win_back_at_goal"] == 0.5
    assert design["finds"]["probe"]["random_win_back_mean"] == pytest.approx(0.1)
    held = summary["held-out"]["finds"]["probe"]
    assert held["win_back_at_goal"] == 0.0 and held["recall"] == 0.5
    text = survey.table(rows, summary, {"model": "m", "tasks": ["t"], "lengths": [512]}, 24, 0.10)
    assert "| D03 | design |" in text and "0 (identity)" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--plants", "D99"], "--plants: unknown id(s) ['D99']"),
        (["--set", "held-out", "--plants", "D01"], "no plant is in both"),
        (["--test-docs", "0"], "--test-docs: 0 is too small"),
        (["--tasks", "ssm_nope"], "--tasks: unknown task(s) ['ssm_nope']"),
        (["--lengths", "64"], "--lengths 64: length 64 is below the minimum"),
    ],
)
def test_bad_survey_input_stops_with_one_line_and_exit_2(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(survey, "measure_plant", lambda *a, **k: pytest.fail("a plant was measured"))
    rc = main(["study", "survey", "--model", "tiny-random-mamba", "--out", str(tmp_path / "out"), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "plants").exists()


def test_a_bad_find_option_or_an_out_file_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["study", "survey", "--out", str(tmp_path), "--finds", "magic"])
    assert stop.value.code == 2 and "'magic' is not a method" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["study", "survey", "--model", "tiny-random-mamba", "--out", str(tmp_path / "file")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def test_a_second_run_resumes_per_plant_and_per_find_option(tmp_path, capsys, monkeypatch):
    measured = []

    def fake_measure(plant, path, a, data, intact, finds):
        measured.append((plant.id, [f.name for f in finds]))
        return _row(plant.id, plant.set, 0.3, {}) | {"finds": {f.name: _find(True, 1, 1, 0) for f in finds}}

    monkeypatch.setattr(survey, "measure_plant", fake_measure)
    monkeypatch.setattr(survey, "find_documents", lambda tokenizer, a, vdocs=(): ({"test": []}, _NoDocs()))
    monkeypatch.setattr("lm_eval_ssmsteer.studies.plant.test_scores_per_document", lambda *a, **k: None)
    args = ["study", "survey", "--model", "tiny-random-mamba", "--out", str(tmp_path), "--plants", "D01"]
    assert main([*args, "--finds", "causal"]) == 0
    assert main([*args, "--finds", "causal", "probe"]) == 0
    assert main([*args, "--finds", "probe"]) == 0
    assert measured == [("D01", ["causal"]), ("D01", ["probe"])]
    row = json.loads((tmp_path / "plants" / "D01.json").read_text())
    assert set(row["finds"]) == {"causal", "probe"}
    assert (tmp_path / "table.md").exists() and (tmp_path / "summary.json").exists()
    assert main([*args, "--test-docs", "9"]) == 2
    assert "made with other settings" in capsys.readouterr().err


class _NoDocs:
    examples: tuple = ()


def test_plants_cover_a_mamba2_model_and_only_the_mamba_layers_of_a_hybrid(tmp_path, capsys):
    folder = save_tiny(tmp_path / "m2", "mamba2")
    assert main(["study", "survey", "--model", str(folder), "--list"]) == 0  # --list needs no --out
    listed = capsys.readouterr().out
    assert all(f" {site} " in listed for site in SITES), listed
    assert main(["study", "survey", "--model", str(folder), "--list", "--set", "unseen"]) == 0
    unseen = capsys.readouterr().out.splitlines()
    assert unseen and all(row.split()[1] == "unseen" for row in unseen), unseen
    assert len(unseen) < len(listed.splitlines())
    hybrid = save_tiny(tmp_path / "bamba", "bamba")
    assert main(["study", "survey", "--model", str(hybrid), "--out", str(tmp_path / "out2"), "--list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    mamba_layers = {f"L{i}" for i in describe_config(AutoConfig.from_pretrained(hybrid)).mamba_layers}
    assert {row.split()[2] for row in rows} <= mamba_layers, rows  # never an attention layer
    assert all(any(f" {site} " in row for row in rows) for site in SITES), rows


def test_find_options_parse_and_name_themselves():
    option = survey.parse_find("probe:screen=5:validate=3")
    assert (option.method, option.screen, option.validate) == ("probe", 5, 3)
    assert option.name == "probe:screen=5:validate=3"
    assert survey.parse_find("causal").name == "causal"
    assert survey.parse_find("causal:validate=2").name == "causal:validate=2"
    # method outlier runs find's narrow screen unless narrow=0, grows 3 rounds unless grow=0, and chooses
    # among 6 validated pairs by the paired comparison unless validate=1; the name writes every option that
    # is on, so a plant file's "outlier" (recorded before the screen was outlier's default),
    # "outlier:narrow=64:narrow_floor=4" (before grow was) and "outlier:narrow=64:narrow_floor=4:grow=3"
    # (before the paired choice was) keep their meaning
    on = ":narrow=64:narrow_floor=4"
    grown = ":grow=3"
    paired = ":validate=6:choice=paired"
    off = ":narrow=0:grow=0:validate=1"  # every default of outlier's off
    option = survey.parse_find("outlier:validate=2:order=ratio:narrow=0:grow=0:choice=gain")
    assert (option.validate, option.order, option.name) == (2, "ratio", "outlier:validate=2:order=ratio")
    assert survey.parse_find("outlier:order=gradient" + off).name == "outlier"
    assert survey.parse_find("outlier:narrow=0:validate=1").name == "outlier" + grown
    option = survey.parse_find("outlier")
    assert (option.narrow, option.narrow_floor, option.grow, option.validate, option.choice) == (
        64,
        4.0,
        3,
        6,
        "paired",
    )
    assert option.name == "outlier" + paired + on + grown
    assert survey.parse_find("outlier:grow=0:validate=1").name == "outlier" + on
    assert survey.parse_find("outlier:validate=1").name == "outlier" + on + grown
    assert (
        survey.parse_find("outlier:narrow=64:narrow_floor=4:grow=3:validate=1").name == "outlier" + on + grown
    )
    # a count without a choice gets outlier's paired choice where it is 2 or more
    assert survey.parse_find("outlier:validate=3:narrow=0:grow=0").name == "outlier:validate=3:choice=paired"
    assert survey.parse_find("outlier:choice=gain:narrow=0:grow=0").name == "outlier:validate=6"
    assert survey.parse_find("outlier:narrow_floor=0:grow=0:validate=1").name == "outlier:narrow=64"
    assert (
        survey.parse_find("outlier:narrow=16:narrow_floor=2.5:grow=0:validate=1").name
        == "outlier:narrow=16:narrow_floor=2.5"
    )
    option = survey.parse_find("outlier:descend=30")
    assert (option.descend, option.name) == (30, "outlier" + paired + ":descend=30" + on + grown)
    option = survey.parse_find("outlier:blocks=8" + off)
    assert (option.blocks, option.name) == (8, "outlier:blocks=8")
    assert survey.parse_find("causal:validate=2:blocks=4").name == "causal:validate=2:blocks=4"
    option = survey.parse_find("outlier:blocks=8:choice=paired:validate=6:narrow=0:grow=0")
    assert (option.choice, option.name) == ("paired", "outlier:validate=6:choice=paired:blocks=8")
    assert survey.parse_find("outlier:validate=6:choice=gain:narrow=0:grow=0").name == "outlier:validate=6"
    option = survey.parse_find("outlier:max_scale=50:blocks=8:choice=paired:validate=6")
    assert option.max_scale == 50
    assert option.name == "outlier:validate=6:choice=paired:blocks=8:max_scale=50" + on + grown
    assert survey.parse_find("causal:max_scale=8").name == "causal"
    assert survey.parse_find("causal:narrow=0").name == "causal"
    option = survey.parse_find("outlier:grow=2:validate=1")
    assert (option.grow, option.name) == (2, "outlier" + on + ":grow=2")
    assert survey.parse_find("causal:grow=2:validate=2").name == "causal:validate=2:grow=2"
    assert survey.parse_find("causal:grow=0").name == "causal"  # the other methods do not grow by default
    option = survey.parse_find("outlier:narrow=64:choice=paired:validate=6:narrow_floor=0:grow=0")
    assert (option.narrow, option.name) == (64, "outlier:validate=6:choice=paired:narrow=64")
    # vdocs: the validation documents a task and length; unset, the name (so every older record) is as it was
    option = survey.parse_find("outlier:vdocs=12")
    assert (option.vdocs, option.name) == (12, "outlier" + paired + on + grown + ":vdocs=12")
    assert survey.parse_find("causal:vdocs=3:validate=2").name == "causal:validate=2:vdocs=3"
    assert survey.parse_find("outlier").vdocs == 0
    # balance: find --balance, named only when on
    option = survey.parse_find("outlier:balance=1")
    assert (option.balance, option.name) == (1, "outlier" + paired + on + grown + ":balance=1")
    assert survey.parse_find("outlier:balance=0").name == survey.parse_find("outlier").name
    for bad in (
        "causal:balance=1",
        "outlier:balance=2",
        "outlier:balance=x",
        "outlier:narrow=-1",
        "outlier:narrow=0:narrow_floor=4",
        "outlier:narrow_floor=-1",
        "outlier:narrow_floor=x",
        "outlier:narrow_floor=nan",
        "causal:narrow_floor=4",
        "causal:narrow=64",
        "outlier:narrow=x",
        "outlier:blocks=0",
        "probe:blocks=8",
        "causal:validate=0",
        "outlier:descend=0",
        "outlier:descend=x",
        "outlier:grow=-1",
        "outlier:grow=x",
        "causal:depth=2",
        "causal:screen=x",
        "nope",
        "causal:order=size",
        "outlier:validate=6:choice=most",
        "outlier:max_scale=7",
        "outlier:max_scale=101",
        "outlier:max_scale=x",
        "outlier:vdocs=0",
        "outlier:vdocs=x",
    ):
        with pytest.raises(Exception, match="--finds"):
            survey.parse_find(bad)
    with pytest.raises(Exception, match="choice=paired chooses among validated pairs: give validate=N"):
        survey.parse_find("outlier:choice=paired:validate=1")
    with pytest.raises(Exception, match="choice=paired chooses among validated pairs: give validate=N"):
        survey.parse_find("causal:choice=paired")  # causal validates 1 pair by default


def test_only_damaging_runs_no_find_on_a_plant_without_damage_and_says_so(tmp_path, monkeypatch):
    from lm_eval_ssmsteer import finder

    monkeypatch.setattr(finder, "find", lambda *a, **k: pytest.fail("find ran on a plant without damage"))
    args = ["study", "survey", "--model", "tiny-random-mamba", "--out", str(tmp_path), "--plants", "D01",
            "--tasks", "ssm_passkey", "--lengths", "256", "--test-docs", "8", "--docs-per-task", "8",
            "--finds", "causal", "--only-damaging"]  # fmt: skip
    assert main(args) == 0
    row = json.loads((tmp_path / "plants" / "D01.json").read_text())
    assert row["damaging"] is False and row["finds"] == {}  # a random model: damping changes no answer
    assert "not run (damage below --min-damage)" in (tmp_path / "table.md").read_text()
    monkeypatch.setattr(survey, "measure_plant", lambda *a, **k: pytest.fail("measured again"))
    assert main(args) == 0  # resumed: the plant is kept, no find is owed


def test_too_few_documents_for_a_survey_is_one_line_and_writes_nothing(tmp_path, capsys):
    args = ["study", "survey", "--model", "tiny-random-mamba", "--out", str(tmp_path / "o"),
            "--plants", "D01", "--tasks", "ssm_passkey", "--lengths", "256",
            "--test-docs", "2", "--docs-per-task", "2"]  # fmt: skip
    assert main(args) == 2
    assert "--test-docs 2 / --docs-per-task 2 with 1 task(s)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("family", HYBRIDS)
def test_a_plant_in_a_hybrid_changes_its_mamba_layer_and_the_inverse_spec_undoes_a_pure_scale(family, site):
    """The survey plants hybrids at their Mamba layers (decoder indices), each family's mixer damped as its
    pure family's; a pure scale of a site is undone exactly by the inverse spec."""
    from lm_eval_ssmsteer.steering import steer

    model = make_model(family)
    if site in {s for s, _ in describe_model(model).refused_sites}:
        pytest.skip(f"{family} refuses {site}")  # refused sites are left out of the plant list
    layer = MAMBA_LAYERS[family][-1]
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        intact = model(ids, use_cache=False).logits
        channels = plant(model, layer, site, 3, 0.1, seed=4)
        damaged = model(ids, use_cache=False).logits
        assert not torch.allclose(intact, damaged, atol=1e-6), (family, site)
        with steer(model, SteeringSpec.single(layer, site, channels, 10.0)):
            undone = model(ids, use_cache=False).logits
    if site in ("mixer_out", "residual", "ssm_out") or (family == "jamba" and site in ("B", "C")):
        # a pure scale of the site (Mamba-2's ssm_out planted on y before the norm, where steering acts)
        torch.testing.assert_close(undone, intact, rtol=1e-4, atol=1e-5)
    elif site in ("gate", "B", "C"):  # SiLU(0.1 z); Mamba-2's B and C before the conv's SiLU: closer
        assert (undone - intact).abs().max() < (damaged - intact).abs().max(), (family, site)
    # delta moves a bias (a saturating damage, which ×10 on Δ can overshoot): the spec is no inverse of it,
    # and only the change above is checked


def test_a_plant_at_an_attention_layer_of_a_hybrid_is_refused():
    model = make_model("bamba")
    with pytest.raises(ValueError, match="layer 1 holds no Mamba mixer; allowed: 0, 2"):
        plant(model, 1, "mixer_out", 3, 0.1, seed=4)
    with pytest.raises(ValueError, match="layer 1 holds no Mamba mixer; allowed: 0, 2"):
        plant(model, 1, "residual", 3, 0.1, seed=4)


def _plant_file(folder, plant_id, which, damage, finds, site="delta", x8=0.9, scale=0.05):
    def find(layer_site, recall, back, control):
        return {
            "found": {"layer": 1, "site": "delta", "channels": [0, 1], "scale": 3.0},
            "written": back is not None,
            "layer_site": layer_site,
            "recall": recall,
            "steered": None if back is None else {"win_back": {"value": back}},
            "random": {"win_back": {"value": control}},
            "validation": "worse" if back is None else "better" if back > 0.25 else "undecided",
        }

    row = {
        "plant": {"id": plant_id, "set": which, "layer": 1, "site": site, "count": 4, "scale": scale},
        "damage": {"mean": damage},
        "planted_x8": {"win_back": {"value": x8}},
        "finds": {name: find(*args) for name, args in finds.items()},
    }
    (folder / "plants").mkdir(parents=True, exist_ok=True)
    (folder / "plants" / f"{plant_id}.json").write_text(json.dumps(row))


def test_pooled_table_counts_the_damaging_plants_of_the_set_over_every_folder(tmp_path):
    a, b = tmp_path / "m1", tmp_path / "m2"
    _plant_file(a, "F01", "fresh", 0.30, {"outlier": (True, 0.5, 0.9, 0.1), "o:r": (True, 1.0, 0.95, 0.0)})
    _plant_file(a, "F02", "fresh", 0.05, {})  # below the damage threshold: counted as a plant only
    _plant_file(a, "U01", "unseen", 0.40, {"outlier": (True, 1.0, 1.0, 0.0)})  # another set
    _plant_file(b, "F01", "fresh", 0.20, {"outlier": (False, 0.0, None, -0.5), "o:r": (False, 0.0, 0.3, 0.2)})
    _plant_file(b, "F03", "fresh", 0.50, {"outlier": (False, 0.0, 0.2, 0.0)}, site="gate", x8=0.1, scale=0.02)
    text = survey.pooled_table([a, b], "fresh", 0.10)
    assert text.splitlines()[0] == "3 of 4 plants (set fresh) cost >= 0.1"
    assert "| outlier | 3 | 1 of 3 | 17% | 1 of 3 | 0.20 | -0.50 to 0.10 |" in text
    assert "| o:r | 2 | 1 of 2 | 50% | 1 of 2 | 0.30 | 0.00 to 0.20 |" in text
    assert "| m2 | F01 L1 delta 4 x0.05 | 0.20 | identity, 0 | L1 delta 2 x3, 0.30 |" in text
    # per planted site: the planted channels x8 repair both delta plants, find wins back one of them
    assert "| delta | 2 | 2 of 2 | 1 / 1 of 2 | 1 / 1 of 2 |" in text
    assert "| gate | 1 | 0 of 1 | 0 / 0 of 1 | – |" in text  # o:r did not run on the gate plant
    # per damping strength, strongest first: the x0.02 gate plant, then the two x0.05 delta plants
    lines = text.splitlines()
    damping = lines.index("| damping | plants | planted channels ×8 win back >= 0.8 "
                          "| outlier: located / won back | o:r: located / won back |")  # fmt: skip
    assert lines[damping + 2 : damping + 4] == [
        "| x0.02 | 1 | 0 of 1 | 0 / 0 of 1 | – |",
        "| x0.05 | 2 | 2 of 2 | 1 / 1 of 2 | 1 / 1 of 2 |",
    ]
    # per validation decision: outlier's specs 0.9 (better), 0.2 (undecided) and the identity written
    # when the validation rejected its choice (worse, win-back 0); o:r's 0.95 and 0.3 (both better)
    assert "| outlier | 1, 0.90, 1 | 1, 0.20, 0 | 1, 0.00, 0 |" in text
    assert "| o:r | 2, 0.30, 1 | 0, –, 0 | 0, –, 0 |" in text
    with pytest.raises(survey.StudyArgumentError, match="no plant files under"):
        survey.pooled_table([tmp_path / "empty"], "fresh", 0.10)


def test_a_find_row_records_what_the_choice_was_made_among(tmp_path):
    args = ["study", "survey", "--model", "tiny-random-mamba", "--out", str(tmp_path), "--plants", "D01",
            "--tasks", "ssm_passkey", "--lengths", "256", "--test-docs", "8", "--docs-per-task", "8",
            "--finds", "outlier:descend=2:narrow=0:grow=0:validate=1",
            "outlier:validate=3:choice=paired:narrow=0:grow=0"]  # fmt: skip
    assert main(args) == 0
    finds = json.loads((tmp_path / "plants" / "D01.json").read_text())["finds"]
    # choice=paired: a comparison is recorded exactly when the validation's best is not the calibration's
    paired = finds["outlier:validate=3:choice=paired"]
    first, *rest = paired["candidates"]
    # the validated pairs: the calibration's choice, then other pairs (the rest are its other channel counts)
    pairs = [first] + [c for c in rest if (c["layer"], c["site"]) != (first["layer"], first["site"])]
    top = max(pairs, key=lambda c: c["loss_decrease"])
    assert top is not first and paired["switch"]["decision"] == "undecided", paired  # the tiny model's case
    assert (paired["found"]["layer"], paired["found"]["site"]) == (first["layer"], first["site"])
    assert "switch" not in finds["outlier:descend=2"]
    found = finds["outlier:descend=2"]
    descended = found["descended"]
    assert descended and all(set(row) == {"channels", "scales"} for row in descended.values())
    # the tiny random model's find validates 5 points (the best and other channel counts, the descent's)
    assert found["validation"] == "better" and len(found["candidates"]) > 1
    assert {"layer", "site", "k", "scale", "calibration_loss", "decision"} <= set(found["candidates"][0])


@pytest.mark.parametrize(
    ("name", "before", "last", "first_seed"),
    [
        ("withheld", "sealed", "S84", 394),
        ("kept", "withheld", "W84", 478),
        ("reserve", "kept", "K84", 562),
        ("extra", "reserve", "R84", 646),
        ("next", "extra", "E84", 730),
        ("trial", "next", "N84", 814),
        ("open", "trial", "T84", 898),
    ],
)
def test_each_later_set_comes_after_the_one_before_and_leaves_every_earlier_plant_as_it_was(
    name, before, last, first_seed
):
    plants = survey.survey_plants(6, REF_WIDTHS)
    drawn_set = [p for p in plants if p.set == name]
    earlier = plants[: plants.index(drawn_set[0])]
    # appended after the set before it, which was run before this one existed and keeps its plants and seeds
    assert plants[len(earlier) : len(earlier) + len(drawn_set)] == drawn_set
    assert earlier[-1].set == before and earlier[-1].id == last and earlier[-1].seed == first_seed - 1
    assert drawn_set[0].seed == first_seed and [p.id for p in drawn_set[:2]] == [
        f"{name[0].upper()}01",
        f"{name[0].upper()}02",
    ]
    assert len(drawn_set) == survey.UNSEEN_PER_SITE * len(SITES)
    previous = {(p.layer, p.site, p.count, p.scale) for p in earlier if p.set == before}
    drawn = [(p.layer, p.site, p.count, p.scale) for p in drawn_set]
    assert drawn != sorted(previous) and len(set(drawn)) == len(drawn)  # its own draw, no repeats


def test_the_gated_set_holds_every_combination_of_ssm_out_and_gate_once_after_every_earlier_plant():
    plants = survey.survey_plants(6, REF_WIDTHS)
    gated = [p for p in plants if p.set == "gated"]
    earlier = plants[: plants.index(gated[0])]
    # appended last: the open set (run before it was drawn) keeps its plants and channel seeds
    assert plants[len(earlier) :] == gated and earlier[-1].id == "O84" and earlier[-1].seed == 981
    assert gated[0].seed == 982 and [p.id for p in gated[:2]] == ["G01", "G02"]
    for site in survey.GATED_SITES:
        combos = [(p.layer, p.count, p.scale) for p in gated if p.site == site]
        # the whole grid of the site on a 6-layer model (6 layers x 2 counts x 3 scales), each once, in a
        # seeded order rather than the grid's
        grid = [(layer, c, s) for layer in range(6) for c in survey._counts(448) for s in survey.SCALES]
        assert sorted(combos) == sorted(grid) and combos != grid, site
    assert {p.site for p in gated} == set(survey.GATED_SITES) and len(gated) == 72
    # a 5-layer model (ref-mamba2's depth) gets its own whole grid: 60 plants
    assert sum(p.set == "gated" for p in survey.survey_plants(5, REF_WIDTHS)) == 60


def test_survey_new_set_splits_a_folders_list_of_plants_into_its_parts(tmp_path):
    """scripts/gpu/survey_new_set.sh, with python3 on PATH a shim that records each survey run instead of
    running it: every plant of the set on the folder's model goes to exactly one part, in list order."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shim = tmp_path / "bin"
    shim.mkdir()
    record = tmp_path / "calls.txt"
    (shim / "python3").write_text(
        "#!/usr/bin/env bash\n"
        'if [[ " $* " == *" --out "* ]]; then echo "$*" >> ' + str(record) + "; exit 0; fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    (shim / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "FOLDERS": "m2-needles m2-copying"}
    out = tmp_path / "out"
    script = root / "scripts" / "gpu" / "survey_new_set.sh"
    done = subprocess.run(
        ["bash", str(script), "gated", "outlier outlier:balance=1", str(out), "4"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "gated, finds outlier outlier:balance=1: 2 folders in 4 parts each" in done.stdout
    calls = record.read_text().splitlines()
    assert len(calls) == 8
    expected = [p.id for p in survey.survey_plants(5, REF_WIDTHS) if p.set == "gated"]
    for folder, tasks in (("m2-needles", "ssm_passkey"), ("m2-copying", "ssm_copy")):
        parts = [c.split() for c in calls if f"/parts/{folder}-" in c]
        assert len(parts) == 4 and all("ref-mamba2" in c and tasks in c for c in parts)
        ids = []
        for words in sorted(parts, key=lambda w: w[w.index("--out") + 1]):
            start = words.index("--plants") + 1
            ids += words[start : words.index("--only-damaging")]
        assert ids == expected, folder
    # an unknown folder or set stops, named
    bad = subprocess.run(
        ["bash", str(script), "gated", "outlier", str(out)],
        cwd=root,
        env={**env, "FOLDERS": "m3-needles"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "FOLDERS names m3-needles" in bad.stderr
    bad = subprocess.run(
        ["bash", str(script), "fresh", "outlier", str(out)], cwd=root, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "SET 'fresh'" in bad.stderr


def test_vdocs_validates_on_more_documents_drawn_as_the_folders_are(monkeypatch):
    import argparse

    from lm_eval_ssmsteer.loading import resolve_model_path
    from lm_eval_ssmsteer.studies.plant import test_scores_per_document

    path = resolve_model_path("tiny-random-mamba")
    model, tokenizer = load_model(path)
    a = argparse.Namespace(
        tasks=["ssm_passkey"], lengths=[256], test_docs=8, docs_per_task=8, device="cpu", model="tiny",
        min_damage=-1.0, only_damaging=False,
    )  # fmt: skip
    data, _ = survey.find_documents(tokenizer, a, [16, 16])
    assert list(data["validation_by"]) == [16]  # one set a count, however many finds ask for it
    few, more = data["validation"], data["validation_by"][16]
    # the same draw, longer: every document of the folder's validation is in it, none of the calibration's
    assert len(more.examples) == 2 * len(few.examples) and set(few.examples) <= set(more.examples)
    assert not set(more.examples) & set(data["calibration"].examples)
    assert survey.find_documents(tokenizer, a)[0]["validation_by"] == {}

    seen = []

    def fake_find(model, calibration, validation=None, **kwargs):
        seen.append(len(validation.examples))
        raise RuntimeError("seen")

    monkeypatch.setattr("lm_eval_ssmsteer.finder.find", fake_find)
    intact = test_scores_per_document(model, data["test"])
    plant_d01 = survey.survey_plants(2, {"B": 16})[0]
    for text, count in (("causal:vdocs=16", 16), ("causal", 8)):
        with pytest.raises(RuntimeError, match="seen"):
            survey.measure_plant(plant_d01, path, a, data, intact, [survey.parse_find(text)])
        assert seen[-1] == count
