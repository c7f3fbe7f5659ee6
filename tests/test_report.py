"""`ssmsteer report` and `ssmsteer regress` on results of real lm-eval runs.

One session fixture trains a tiny Mamba (word-level tokenizer, a few seconds on CPU) to recall a colour
across filler words, then evaluates it through lm-eval on two tiny local tasks: one scored by accuracy
(with stderr), one RULER-style with a metric per context length (no stderr). The planted regressions
are real runs too: the same model with its mixer outputs zeroed, and a steering spec that zeroes them.
"""

from __future__ import annotations

import argparse
import base64
import csv
import importlib.util
import json
import math
import random
import re
import shutil
import sys
from pathlib import Path

import pytest

from lm_eval_ssmsteer.report import cli as report_cli
from lm_eval_ssmsteer.report import cli_regress
from lm_eval_ssmsteer.report.intervals import Z_95, wilson
from lm_eval_ssmsteer.report.leaderboard import build_leaderboard, delta
from lm_eval_ssmsteer.report.regress import tolerance, write_baseline
from lm_eval_ssmsteer.report.results import ResultsError, Score, load_runs

pytestmark = pytest.mark.slow

COLOURS = ["red", "blue", "green"]
FILLER = ["the", "dog", "sat", "on", "a", "mat"]
WORDS = ["<pad>", "<eos>", "<unk>", *sorted(set(COLOURS + FILLER + ["cat", "is", "what", "colour"]))]
LENGTHS = (16, 32, 64)
GROUP = "ssmrep_group"  # the runs evaluate a group, as `--tasks ssmsteer_quick` does
REPO = Path(__file__).resolve().parents[1]


def recall_words(rng: random.Random, n_filler: int) -> tuple[list[str], str]:
    colour = rng.choice(COLOURS)
    filler = [rng.choice(FILLER) for _ in range(n_filler)]
    return ["the", "cat", "is", colour, *filler, "what", "colour", "is", "the", "cat"], colour


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)


def train_recall_model(steps: int = 80):
    """A 2-layer Mamba that learns to answer the cat's colour (accuracy ~1 where chance is 1/3)."""
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    rng = random.Random(0)
    vocab = {w: i for i, w in enumerate(WORDS)}
    config = MambaConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    model = MambaForCausalLM(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        n_filler = rng.choice([0, 2, 4, 8])
        batch = [recall_words(rng, n_filler) for _ in range(32)]
        ids = torch.tensor([[vocab[w] for w in words + [colour]] for words, colour in batch])
        logits = model(ids[:, :-1]).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, ids[:, -1])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def write_tasks(folder: Path, version: float = 1.0) -> Path:
    """Two multiple-choice tasks over generated documents; the second reports one metric per length."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    docs = []
    for i in range(36):
        length = LENGTHS[i % len(LENGTHS)]
        words, colour = recall_words(rng, length - 10)
        docs.append(
            {
                "question": " ".join(words),
                "choices": COLOURS,
                "label": COLOURS.index(colour),
                "length": length,
            }
        )
    (folder / "recall.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "recall_len_metrics.py").write_text(
        "import numpy as np\n\n"
        f"LENGTHS = {LENGTHS!r}\n\n\n"
        "def process_results(doc, results):\n"
        "    correct = float(int(np.argmax([ll for ll, _ in results])) == doc['label'])\n"
        "    scores = {str(n): -1.0 for n in LENGTHS}  # RULER's convention: -1 = not this length\n"
        "    scores[str(doc['length'])] = correct\n"
        "    return scores\n\n\n"
        "def mean_of_measured(values):\n"
        "    kept = [v for v in values if v != -1]\n"
        "    return sum(kept) / len(kept) if kept else -1\n"
    )
    common = (
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'recall.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        f"metadata:\n  version: {version}\n"
    )
    (folder / "recall.yaml").write_text(f"task: ssmrep_recall\n{common}metric_list:\n  - metric: acc\n")
    per_length = "".join(
        f'  - metric: "{n}"\n    aggregation: !function recall_len_metrics.mean_of_measured\n'
        "    higher_is_better: true\n"
        for n in LENGTHS
    )
    (folder / "group.yaml").write_text(
        f"group: {GROUP}\ntask:\n  - ssmrep_recall\n  - ssmrep_recall_len\n"
        "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
    )
    (folder / "recall_len.yaml").write_text(
        f"task: ssmrep_recall_len\n{common}process_results: !function recall_len_metrics.process_results\n"
        f"metric_list:\n{per_length}"
    )
    return folder


def evaluate(model_args: dict, tasks: Path, out: Path, backend: str = "hf") -> Path:
    """One lm-eval run, saved as the lm_eval CLI saves it (--output_path, --log_samples)."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    tracker = EvaluationTracker(output_path=str(out))
    results = lm_eval.simple_evaluate(
        model=backend,
        model_args=model_args,
        tasks=[GROUP],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        device="cpu",
        batch_size=8,
        log_samples=True,
        evaluation_tracker=tracker,
    )
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    (found,) = out.rglob("results_*.json")
    return found


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Results files of every run the tests compare, by name."""
    import torch

    root = tmp_path_factory.mktemp("report")
    tasks = write_tasks(root / "tasks")
    # one thread: on a busy 2-core runner, two threads per tiny op are ~10x slower than one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _evaluate_all(root, tasks)
    finally:
        torch.set_num_threads(threads)


def _evaluate_all(root: Path, tasks: Path) -> dict[str, Path]:
    import torch

    good = train_recall_model()
    model_dir = root / "a" / "tiny-mamba"
    good.save_pretrained(model_dir)
    save_tokenizer(model_dir)
    # "the same model, changed": same folder name elsewhere, mixer outputs zeroed
    damaged_dir = root / "b" / "tiny-mamba"
    with torch.no_grad():
        for layer in good.backbone.layers:
            layer.mixer.out_proj.weight.zero_()
    good.save_pretrained(damaged_dir)
    save_tokenizer(damaged_dir)

    spec_file = root / "spec.json"
    mild = {
        "version": 1,
        "interventions": [{"layer": 0, "site": "mixer_out", "channels": "all", "scale": 1.05}],
    }
    harmful = {
        "version": 1,
        "interventions": [{"layer": "all", "site": "mixer_out", "channels": "all", "scale": 0.0}],
    }
    files = {
        "base": evaluate({"pretrained": str(model_dir)}, tasks, root / "out" / "base"),
        "rerun": evaluate({"pretrained": str(model_dir)}, tasks, root / "out" / "rerun"),
        "damaged": evaluate({"pretrained": str(damaged_dir)}, tasks, root / "out" / "damaged"),
        "task_v2": evaluate(
            {"pretrained": str(model_dir)},
            write_tasks(root / "tasks_v2", version=2.0),
            root / "out" / "task_v2",
        ),
    }
    spec_file.write_text(json.dumps(mild))
    files["mild"] = evaluate(
        {"pretrained": str(model_dir), "steer": str(spec_file)},
        tasks,
        root / "out" / "mild",
        backend="mamba-steered",
    )
    spec_file.write_text(json.dumps(harmful))  # the spec file edited for the worse
    files["harmful"] = evaluate(
        {"pretrained": str(model_dir), "steer": str(spec_file)},
        tasks,
        root / "out" / "harmful",
        backend="mamba-steered",
    )
    return files


def scores_of(path: Path) -> dict:
    return json.loads(path.read_text())["results"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``ssmsteer report|regress ARGV`` through the subcommands' own parsers (as ``ssmsteer`` mounts them)."""
    parser = argparse.ArgumentParser(prog="ssmsteer")
    subparsers = parser.add_subparsers()
    report_cli.add_parser(subparsers)
    cli_regress.add_parser(subparsers)
    args = parser.parse_args([str(a) for a in argv])
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- report ----------------------------------------------------------------------------------------


def test_trained_model_recalls_and_damage_removes_it(runs):
    """Guards the fixture itself: the planted regressions must really be regressions."""
    assert scores_of(runs["base"])["ssmrep_recall"]["acc,none"] >= 0.9
    assert scores_of(runs["damaged"])["ssmrep_recall"]["acc,none"] <= 0.6
    assert scores_of(runs["harmful"])["ssmrep_recall"]["acc,none"] <= 0.6


def test_report_has_one_row_per_model_and_spec_with_scores_from_the_files(runs, tmp_path, capsys):
    out = tmp_path / "report"
    code, stdout, _ = run_cli(
        capsys, "report", runs["base"].parent, runs["mild"], runs["harmful"], "--out", out
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy_vs_length.png",
        "leaderboard.csv",
        "leaderboard.md",
        "report.html",
        "scores.csv",
        "steering_gains.png",
    ]
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert len(rows) == 3
    assert not any(GROUP in column for column in rows[0]), "a group's tasks are the columns, not the group"
    by_backend_spec = {(r["backend"], r["steering_spec_sha256"] != ""): r for r in rows}
    hf = by_backend_spec[("hf", False)]
    base = scores_of(runs["base"])
    assert float(hf["ssmrep_recall (acc)"]) == base["ssmrep_recall"]["acc,none"]
    assert float(hf["ssmrep_recall (acc) stderr"]) == base["ssmrep_recall"]["acc_stderr,none"]
    for n in LENGTHS:
        assert float(hf[f"ssmrep_recall_len@{n}"]) == base["ssmrep_recall_len"][f"{n},none"]
        assert hf[f"ssmrep_recall_len@{n} stderr"] == ""  # lm-eval reports N/A for custom aggregations
    length_mean = sum(base["ssmrep_recall_len"][f"{n},none"] for n in LENGTHS) / len(LENGTHS)
    assert float(hf["average"]) == pytest.approx((base["ssmrep_recall"]["acc,none"] + length_mean) / 2)
    # the zeroing spec ranks last and its loss shows as a negative delta against the unsteered model
    worst = min(rows, key=lambda r: float(r["average"]))
    assert worst["rank"] == "3" and float(worst["delta average"]) < 0
    assert "| 1 | tiny-mamba |" in stdout and "Steering gains per task" in stdout


def test_steering_gain_interval_of_proportions_is_newcombes_from_the_wilson_intervals(runs):
    board = build_leaderboard(load_runs([runs["base"], runs["harmful"]]))
    steered = next(row for row in board.rows if row.steered)
    column = next(c for c in board.columns if c.task == "ssmrep_recall")
    base, harmful = scores_of(runs["base"])["ssmrep_recall"], scores_of(runs["harmful"])["ssmrep_recall"]
    n = json.loads(runs["base"].read_text())["n-samples"]["ssmrep_recall"]["effective"]
    d = steered.deltas[column]
    assert d.value == pytest.approx(harmful["acc,none"] - base["acc,none"])
    (low_h, high_h), (low_b, high_b) = wilson(harmful["acc,none"], n), wilson(base["acc,none"], n)
    assert d.low == pytest.approx(
        d.value - math.hypot(harmful["acc,none"] - low_h, high_b - base["acc,none"])
    )
    assert d.high == pytest.approx(
        d.value + math.hypot(high_h - harmful["acc,none"], base["acc,none"] - low_b)
    )
    assert d.significant
    # lengths have no stderr but n documents each: their gains get an interval too, never a zero-width one
    assert all(steered.deltas[c].high > steered.deltas[c].low for c in board.columns if c.length is not None)
    # scores that are not proportions: 1.96 * sqrt(se_a^2 + se_b^2)
    other = delta(Score(12.0, 0.3), Score(11.0, 0.4))
    assert (other.low, other.high) == pytest.approx((1.0 - Z_95 * 0.5, 1.0 + Z_95 * 0.5))


def test_html_is_self_contained_with_the_png_plots_inlined(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert run_cli(capsys, "report", runs["base"], runs["harmful"], "--out", out)[0] == 0
    page = (out / "report.html").read_text()
    assert not re.search(r'(src|href)="(?!data:)', page), "the page must not load anything from outside"
    inlined = [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert inlined == [
        (out / "accuracy_vs_length.png").read_bytes(),
        (out / "steering_gains.png").read_bytes(),
    ]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in inlined)


def test_without_matplotlib_the_tables_are_written_and_the_page_says_why(runs, tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    code, _, err = run_cli(capsys, "report", runs["base"], runs["harmful"], "--out", tmp_path)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "leaderboard.csv",
        "leaderboard.md",
        "report.html",
        "scores.csv",
    ]
    assert "matplotlib is not installed" in (tmp_path / "report.html").read_text()
    assert "note: no plots: matplotlib is not installed" in err


def test_report_is_deterministic(runs, tmp_path, capsys):
    first, second = tmp_path / "1", tmp_path / "2"
    for out in (first, second):
        assert run_cli(capsys, "report", runs["base"], runs["harmful"], "--out", out)[0] == 0
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name


def test_metric_option_picks_the_column_metric(runs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", runs["base"], "--out", tmp_path, "--metric", "ssmrep_recall=f1")
    assert code == 2 and "task 'ssmrep_recall' has no metric 'f1' (it has: acc)" in err


# -- malformed, partial and mixed inputs -------------------------------------------------------------


def _mutations():
    def drop(key):
        return lambda d: {k: v for k, v in d.items() if k != key}

    def edit(fn):
        def apply(d):
            fn(d)
            return d

        return apply

    return {
        "truncated": (None, "is not valid JSON (line"),
        "not-object": (lambda d: [d], "expected a JSON object at the top level, found list"),
        "no-results": (drop("results"), "not an lm-eval results file: it has no 'results' key"),
        "no-configs": (drop("configs"), "partial lm-eval results file: the 'configs' key is missing"),
        "no-version": (
            edit(lambda d: d["versions"].pop("ssmrep_recall")),
            "partial results: task 'ssmrep_recall' is missing from 'versions'",
        ),
        "no-config": (
            edit(lambda d: d["configs"].pop("ssmrep_recall_len")),
            "partial results: task 'ssmrep_recall_len' has scores but no entry in 'configs'",
        ),
        "bad-score": (
            edit(lambda d: d["results"]["ssmrep_recall"].update({"acc,none": "0.9"})),
            "task 'ssmrep_recall': 'acc,none' should be a number, found '0.9'",
        ),
    }


@pytest.mark.parametrize("name", list(_mutations()))
def test_malformed_results_name_the_file_and_the_problem(runs, tmp_path, capsys, name):
    mutate, problem = _mutations()[name]
    text = runs["base"].read_text()
    broken = tmp_path / "results_broken.json"
    broken.write_text(text[: len(text) // 2] if mutate is None else json.dumps(mutate(json.loads(text))))
    for argv in (
        ["report", broken, "--out", tmp_path / "r"],
        ["regress", "--baseline", runs["base"], "--current", broken],
    ):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2
        assert f"{broken}: {problem}" in err


def test_folder_without_results_is_an_error(tmp_path, capsys):
    (tmp_path / "samples_x.jsonl").write_text("{}\n")
    code, _, err = run_cli(capsys, "report", tmp_path, "--out", tmp_path / "r")
    assert code == 2 and f"{tmp_path}: folder holds no results_*.json files" in err


def test_samples_file_is_pointed_to_its_results(runs, tmp_path, capsys):
    (samples, *_) = sorted(runs["base"].parent.glob("samples_*.jsonl"))
    code, _, err = run_cli(capsys, "report", samples, "--out", tmp_path)
    assert code == 2 and f"{samples}: is an lm-eval samples file; pass the results_*.json beside it" in err


def test_mixed_task_versions_cannot_share_a_leaderboard(runs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", runs["task_v2"], runs["harmful"], "--out", tmp_path)
    assert code == 2
    assert "mixed results: task 'ssmrep_recall' has task version" in err
    assert str(runs["task_v2"]) in err and str(runs["harmful"]) in err


def test_reruns_in_one_folder_keep_the_newest(runs, tmp_path, capsys):
    folder = tmp_path / "reruns"
    shutil.copytree(runs["base"].parent, folder / "first")
    shutil.copytree(runs["damaged"].parent, folder / "second")  # evaluated later: same model name
    (row,) = build_leaderboard(load_runs([folder])).rows
    assert all(task.source.is_relative_to(folder / "second") for task in row.run.tasks.values())
    code, _, err = run_cli(capsys, "report", folder, "--out", tmp_path / "r")
    assert code == 0
    assert re.search(r"note: .*first.*: 'ssmrep_recall' superseded by a newer run", err)


def test_model_arguments_that_change_the_model_make_their_own_row(runs, tmp_path):
    data = json.loads(runs["base"].read_text())
    pretrained = data["config"]["model_args"]["pretrained"]
    data["config"]["model_args"] = {"pretrained": pretrained, "dtype": "bfloat16", "device": "cpu"}
    as_dict = tmp_path / "results_dict.json"
    as_dict.write_text(json.dumps(data))
    # simple_evaluate(model_args="k=v,...") records the string as given
    data["config"]["model_args"] = f"pretrained={pretrained},revision=v2,batch_size=4"
    as_string = tmp_path / "results_string.json"
    as_string.write_text(json.dumps(data))
    board = build_leaderboard(load_runs([runs["base"], as_dict, as_string]))
    assert sorted(row.run.model_label for row in board.rows) == [
        "tiny-mamba",
        "tiny-mamba (dtype=bfloat16)",
        "tiny-mamba (revision=v2)",
    ]


def test_nan_stderr_reads_as_unknown(runs, tmp_path):
    data = json.loads(runs["base"].read_text())
    data["results"]["ssmrep_recall"]["acc_stderr,none"] = float("nan")  # lm-eval writes NaN for n=1
    path = tmp_path / "results_nan.json"
    path.write_text(json.dumps(data))
    (run,) = load_runs([path])
    score = next(iter(run.tasks["ssmrep_recall"].scores.values()))
    assert score.value == data["results"]["ssmrep_recall"]["acc,none"] and score.stderr is None


# -- regress ---------------------------------------------------------------------------------------


def test_identical_rerun_passes(runs, capsys):
    code, out, _ = run_cli(capsys, "regress", "--baseline", runs["base"], "--current", runs["rerun"].parent)
    assert code == 0
    assert "0 regressed, 0 missing" in out


def test_damaged_model_is_a_regression(runs, capsys):
    code, out, err = run_cli(capsys, "regress", "--baseline", runs["base"], "--current", runs["damaged"])
    assert code == 1
    assert re.search(r"\| ssmrep_recall \| acc,none \| .* \| REGRESSED \|", out)
    assert "regressed or missing" in err


def test_worse_spec_in_the_same_spec_file_is_a_regression(runs, tmp_path, capsys):
    baseline = write_baseline([runs["base"], runs["mild"]], tmp_path / "baselines" / "tiny.json")
    code, out, _ = run_cli(
        capsys, "regress", "--baseline", baseline, "--current", runs["base"], runs["harmful"]
    )
    assert code == 1
    assert "the steering spec changed, now all layers mixer_out×0.0" in out
    assert "REGRESSED" in out
    same = run_cli(capsys, "regress", "--baseline", baseline, "--current", runs["rerun"], runs["mild"])
    assert same[0] == 0


def test_missing_run_fails(runs, tmp_path, capsys):
    baseline = write_baseline([runs["base"], runs["mild"]], tmp_path / "b.json")
    code, out, _ = run_cli(capsys, "regress", "--baseline", baseline, "--current", runs["rerun"])
    assert code == 1
    assert "| MISSING |" in out


def test_changed_task_definition_is_refused_unless_allowed(runs, capsys):
    code, _, err = run_cli(capsys, "regress", "--baseline", runs["base"], "--current", runs["task_v2"])
    assert code == 2
    assert "task 'ssmrep_recall': task version 1.0 in the baseline, 2.0 now" in err
    assert "task 'ssmrep_recall': task config (differs in: metadata.version) sha256" in err
    assert "--allow-config-mismatch" in err
    code, out, _ = run_cli(
        capsys, "regress", "--baseline", runs["base"], "--current", runs["task_v2"], "--allow-config-mismatch"
    )
    assert code == 0  # same model, same documents: only the version number moved
    assert "warning: compared despite" in out


def test_unrelated_results_are_refused(runs, capsys):
    code, _, err = run_cli(capsys, "regress", "--baseline", runs["base"], "--current", runs["mild"])
    assert code == 2 and "no run in the current results matches one in the baseline" in err


def test_baseline_file_round_trips(runs, tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    code, _, _ = run_cli(
        capsys,
        "regress",
        "--update-baseline",
        "--baseline",
        baseline,
        "--current",
        runs["base"],
        runs["mild"],
    )
    assert code == 0
    assert json.loads(baseline.read_text())["format"] == "ssmsteer-baseline/1"
    original = {
        (r.key, t): task.scores
        for r in load_runs([runs["base"], runs["mild"]])
        for t, task in r.tasks.items()
    }
    frozen = {(r.key, t): task.scores for r in load_runs([baseline]) for t, task in r.tasks.items()}
    assert frozen == original
    assert run_cli(capsys, "report", baseline, "--out", tmp_path / "r")[0] == 0


def test_tolerance_is_the_larger_of_the_floor_and_the_stderr_interval():
    assert tolerance(Score(0.5, 0.03), Score(0.4, 0.04), z=1.96, floor=0.01) == pytest.approx(1.96 * 0.05)
    assert tolerance(Score(0.5, None), Score(0.4, None), z=1.96, floor=0.02) == 0.02
    assert delta(Score(0.5, 0.03), Score(0.4, None)).low is None


def test_loader_error_type_carries_the_file(tmp_path):
    with pytest.raises(ResultsError) as info:
        load_runs([tmp_path / "nowhere.json"])
    assert (
        info.value.source == str(tmp_path / "nowhere.json") and info.value.problem == "no such file or folder"
    )


# -- the HTML page in a real browser ---------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium on PATH")
def test_html_renders_sorts_and_shows_plots_in_chromium(runs, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "check_report_html", REPO / "scripts" / "check_report_html.py"
    )
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    out = tmp_path / "report"
    assert run_cli(capsys, "report", runs["base"], runs["mild"], runs["harmful"], "--out", out)[0] == 0
    result = checker.check(out / "report.html", screenshots=tmp_path / "shots")
    assert result["rows"] == 3
    assert result["sorted_descending"] and result["sorted_ascending"]
    assert result["images"] == 2 and result["images_visible"] == 2
    assert result["page_width"] <= result["window_width"] == checker.WINDOW[0]
    for shot in ("report_top.png", "report_full.png", "report_scrolled.png"):
        assert (tmp_path / "shots" / shot).read_bytes().startswith(b"\x89PNG")
