"""Data-parallel evaluation with steering: N processes (`accelerate launch`) against one, side by side.

    python benchmarks/data_parallel.py --processes 2 --out OUT \\
        --model-args pretrained=MODEL,dtype=bfloat16,steer=paper-mamba-130m \\
        --tasks ssm_passkey,ssm_copy_mc --metadata '{"max_seq_lengths": [8192]}' \\
        [--sweep-tasks ssm_copy_mc --sweep-layers 4,8,12 --sweep-sites delta --sweep-scales 2]

**lm_eval.** Runs `lm_eval --model mamba-steered` once in one process and once under
`accelerate launch --num_processes N`, both with `--log_samples` (through `_timed_lm_eval.py`, lm-eval's
own command line with the seconds each process spends answering requests recorded), then compares them
document by document (same task, doc_id and document hash): the filtered responses, the per-document
metrics and, for loglikelihood requests, the log-probabilities (the largest difference is printed; 0 means
bitwise). Speed-up is reported twice: on wall time (start-up included: imports, model load and task
building, which every process pays once, so it does not shrink with N) and on the evaluation's throughput
(documents over the seconds spent answering requests, the slowest process's for N).

**Shard replay** (``--shard-replay``): each rank's share of the documents (lm-eval gives rank r the
documents r, r + N, ...) is also run alone in one process (``--samples``), so with the batches that rank
formed, on one GPU each. The launch must equal the replay document by document; a document where the
launch differs from the one-process run and the replay differs the same way comes from its batch
composition (its batch mates decide its left padding), and is listed under ``batch_composition_differing``
instead of failing the run. ``--replay-only`` (one GPU, or a CPU) runs the one-process run and the replay
alone: what batch composition by itself changes.

**ssmsteer sweep** (with `--sweep-layers`/`--sweep-sites`/`--sweep-scales`): the same grid swept by one
process and by `accelerate launch --num_processes N -m lm_eval_ssmsteer sweep` (the processes split the
cells); every cell's documents and the leaderboards compared the same way.

Prints the tables and writes OUT/data_parallel.json; exits 1 when any output differs (a log-probability by
more than `--logprob-tolerance`, 0 by default) and the shard replay does not account for it, or the
N-process lm_eval results do not record world_size N.

lm-eval shards documents across processes only on accelerators (HFLM keeps world size 1 on a CPU, where
every process would evaluate everything), so this needs N GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lm_eval_ssmsteer.report.documents import samples_in

HERE = Path(__file__).resolve().parent
# the sweep's leaderboard files compared line by line (report/; scores.csv names each cell's results file,
# whose name holds its date, and the cells are compared document by document anyway)
_LEADERBOARDS = ("leaderboard.csv", "paired.csv")


def _run(cmd: list[str], out: Path, env: dict[str, str] | None = None) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = (out / "log.txt").read_text()[-3000:]
        raise SystemExit(f"error: {' '.join(cmd[:6])} ... exited {done.returncode}:\n{tail}")
    return seconds


def _load(folder: Path) -> tuple[dict, dict[tuple[str, int], dict]]:
    [results] = sorted(folder.rglob("results_*.json"))[-1:]
    return json.loads(results.read_text()), samples_in(folder)


def _logprobs(sample: dict) -> list[float]:
    """A loglikelihood document's log-probabilities, one a choice. lm-eval's sample files hold each
    response as [log-prob, is-greedy], written as strings ("-161.39654541015625", "False") by 0.4.13 and
    as numbers by other versions; a generation's responses are plain strings and give none."""
    out = []
    for resp in sample["resps"]:
        for r in resp:
            if isinstance(r, list) and len(r) == 2 and isinstance(r[0], int | float | str):
                try:
                    out.append(float(r[0]))
                except ValueError:
                    continue
    return out


def _metrics(sample: dict) -> dict:
    return {name: sample.get(name) for name in sample.get("metrics", [])}


def _compare_samples(s1: dict, sn: dict, logprob_tolerance: float) -> dict:
    """Two runs' documents, one by one: the count identical, the largest log-probability difference, the
    documents whose outputs differ (response, per-document metric, or a log-probability beyond the
    tolerance) and what is wrong besides."""
    problems = []
    if s1.keys() != sn.keys():
        problems.append(f"documents differ: {len(s1.keys() ^ sn.keys())} in one run only")
    same, max_dlogp, differing = 0, 0.0, []
    for key in sorted(s1.keys() & sn.keys()):
        a, b = s1[key], sn[key]
        if a["doc_hash"] != b["doc_hash"]:
            problems.append(f"{key}: different documents")
            continue
        lp_a, lp_b = _logprobs(a), _logprobs(b)
        dlogp = max((abs(x - y) for x, y in zip(lp_a, lp_b, strict=True)), default=0.0)
        max_dlogp = max(max_dlogp, dlogp)
        same_outputs = a["filtered_resps"] == b["filtered_resps"] and _metrics(a) == _metrics(b)
        if same_outputs and lp_a == lp_b:
            same += 1
        if not same_outputs or dlogp > logprob_tolerance:
            differing.append(key)
    return {
        "documents": len(s1),
        "identical_documents": same,
        "max_abs_logprob_difference": max_dlogp,
        "differing": [f"{task}/{doc}" for task, doc in differing],
        "problems": problems,
    }


def _differing_problem(differing: list[str]) -> str:
    return f"{len(differing)} documents' outputs differ (e.g. {', '.join(differing[:5])})"


def compare(one: Path, many: Path, processes: int | None, logprob_tolerance: float = 0.0) -> dict:
    """Document by document, the run in ``one`` against the run in ``many``; ``processes``: the world size
    ``many`` must record (None: not checked, e.g. a sweep's cells, each a one-process evaluation)."""
    r1, s1 = _load(one)
    rn, sn = _load(many)
    report = _compare_samples(s1, sn, logprob_tolerance)
    problems = report["problems"]
    if processes is not None and rn["config"].get("world_size") != processes:
        problems.insert(0, f"world_size recorded {rn['config'].get('world_size')}, launched {processes}")
    if report["differing"]:
        problems.append(_differing_problem(report["differing"]))
    report["metrics_equal"] = r1["results"] == rn["results"]
    if not report["metrics_equal"]:
        problems.append("aggregated metrics differ")
    return report


def shares(samples: dict[tuple[str, int], dict], processes: int) -> list[dict[str, list[int]]]:
    """The documents each of ``processes`` ranks evaluates, by task: lm-eval gives rank r the documents
    r, r + N, r + 2N, ... of a task (``create_iterator``: islice(docs, rank, limit, world_size))."""
    ids: dict[str, list[int]] = {}
    for task, doc in sorted(samples):
        ids.setdefault(task, []).append(doc)
    for task, docs in ids.items():
        if len(docs) < processes:
            # an empty --samples list would make lm-eval evaluate every document of the task
            raise SystemExit(
                f"error: task {task} has {len(docs)} documents, fewer than the {processes} processes"
            )
    return [{task: docs[rank::processes] for task, docs in ids.items()} for rank in range(processes)]


def merge_replay(folders: list[Path], share_list: list[dict[str, list[int]]]) -> dict[tuple[str, int], dict]:
    """The one-process runs of each rank's share (``--samples``) as one run, keyed by the documents' ids
    in the full task. lm-eval 0.4.13 keeps a ``--samples`` document's own doc_id; a run numbered 0, 1, ...
    in the order given (as lm-eval's ``create_iterator`` call over the selected documents reads) is mapped
    back; anything else is an error."""
    merged = {}
    for folder, share in zip(folders, share_list, strict=True):
        _, samples = _load(folder)
        for task, wanted in share.items():
            found = sorted(doc for t, doc in samples if t == task)
            if found == sorted(wanted):
                ids = {doc: doc for doc in found}
            elif found == list(range(len(wanted))):
                ids = dict(enumerate(wanted))
            else:
                raise SystemExit(f"error: {folder}: task {task} has documents {found[:6]}..., not its share")
            merged |= {(task, ids[doc]): {**samples[(task, doc)], "doc_id": ids[doc]} for doc in found}
    return merged


def _request_seconds(folder: Path) -> float | None:
    """The slowest process's seconds answering requests (``_timed_lm_eval.py``'s files), if written."""
    files = sorted(folder.glob("rank*.json"))
    if not files:
        return None
    return max(sum(json.loads(f.read_text()).values()) for f in files)


def cells_seconds(sweep: Path) -> float | None:
    """From the first cell's start to the last cell's end, over every process: each cell's results file
    records when its evaluation started (``date``, seconds since the epoch) and how long it took
    (``total_evaluation_time_seconds``). Process start-up, the model load and the final report are outside."""
    spans = []
    for path in sweep.glob("cells/*/*/results_*.json"):
        results = json.loads(path.read_text())
        start = float(results["date"])
        spans.append((start, start + float(results["total_evaluation_time_seconds"])))
    if not spans:
        return None
    return max(end for _, end in spans) - min(start for start, _ in spans)


def _without_steering(model_args: str) -> str:
    return ",".join(kv for kv in model_args.split(",") if not kv.split("=", 1)[0].startswith("steer"))


def _leaderboard_rows(folder: Path) -> dict[str, list[str]]:
    """The sweep's leaderboard files, line by line."""
    found = ((name, folder / "report" / name) for name in _LEADERBOARDS)
    return {name: path.read_text().splitlines() for name, path in found if path.exists()}


def compare_sweeps(one: Path, many: Path, logprob_tolerance: float = 0.0) -> dict:
    """Cell by cell (each a one-process lm-eval run), the sweep in ``one`` against the one in ``many``."""
    cells_1 = sorted(p.name for p in (one / "cells").iterdir())
    cells_n = sorted(p.name for p in (many / "cells").iterdir())
    problems, documents, identical, max_dlogp = [], 0, 0, 0.0
    if cells_1 != cells_n:
        problems.append(f"cells differ: {sorted(set(cells_1) ^ set(cells_n))}")
    for cell in sorted(set(cells_1) & set(cells_n)):
        report = compare(one / "cells" / cell, many / "cells" / cell, None, logprob_tolerance)
        documents += report["documents"]
        identical += report["identical_documents"]
        max_dlogp = max(max_dlogp, report["max_abs_logprob_difference"])
        problems += [f"cell {cell}: {p}" for p in report["problems"]]
    leaderboards_1, leaderboards_n = _leaderboard_rows(one), _leaderboard_rows(many)
    if not leaderboards_1:
        problems.append("no leaderboard written by the one-process sweep")
    leaderboards_equal = leaderboards_1 == leaderboards_n
    if not leaderboards_equal:
        problems.append("the leaderboards differ")
    return {
        "cells": len(cells_1),
        "documents": documents,
        "identical_documents": identical,
        "max_abs_logprob_difference": max_dlogp,
        "leaderboards_equal": leaderboards_equal,
        "problems": problems,
    }


def _table(rows: list[tuple[str, float, float | None]], documents: int, busy: str = "request") -> None:
    """Wall seconds and, where known, busy seconds (answering requests, or evaluating a sweep's cells), for
    1 and N processes, with both speed-ups."""
    (_, wall_1, req_1), *_ = rows
    print(f"| processes | wall s | speed-up (wall) | {busy} s | documents/s ({busy}s) | speed-up ({busy}s) |")
    print("|---|---|---|---|---|---|")
    for name, wall, req in rows:
        req_cells = "| | " if req is None or req_1 is None else f"| {req:.1f} | {documents / req:.1f} "
        req_speed = "" if req is None or req_1 is None else f"{req_1 / req:.2f}x"
        print(f"| {name} | {wall:.1f} | {wall_1 / wall:.2f}x {req_cells}| {req_speed} |")


def _verdict(report: dict, what: str) -> None:
    print(
        f"{what}: identical documents {report['identical_documents']}/{report['documents']}; largest "
        f"|log-prob difference| {report['max_abs_logprob_difference']:.3g}"
    )
    for problem in report["problems"]:
        print(f"PROBLEM: {problem}")


def _launcher(n: int) -> list[str]:
    return [sys.executable] if n == 1 else ["accelerate", "launch", "--num_processes", str(n)]


def _replay(a: argparse.Namespace, common: list[str], one: Path, gpus: int) -> dict[tuple[str, int], dict]:
    """Each rank's share of the documents evaluated by one process alone (``--samples``), merged: the same
    batches a rank of the launch forms, without a launch. With a GPU a share the shares run at once, each
    on its own GPU; otherwise one after the other on the first."""
    share_list = shares(_load(one)[1], a.processes)
    every = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(max(gpus, 1))))
    visible = every.split(",")[: max(gpus, 1)]
    parallel = len(visible) >= a.processes
    folders, running = [], []
    for rank, share in enumerate(share_list):
        out = a.out / "replay" / f"rank{rank}"
        out.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible[rank if parallel else 0]}
        cmd = [sys.executable, str(HERE / "_timed_lm_eval.py"), *common, "--samples", json.dumps(share)]
        cmd += ["--output_path", str(out)]
        with open(out / "log.txt", "w") as log:
            running.append((out, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
        if not parallel:
            running[-1][1].wait()
        folders.append(out)
    for out, process in running:
        if process.wait():
            tail = (out / "log.txt").read_text()[-3000:]
            raise SystemExit(f"error: the replay of {out.name}'s share exited {process.returncode}:\n{tail}")
    merged = merge_replay(folders, share_list)
    # one file a task, as lm-eval writes them (scripts/gpu/divergence.py reads the replay from here)
    (a.out / "replay" / "merged").mkdir(exist_ok=True)
    for task in share_list[0]:
        lines = [json.dumps(merged[key]) for key in sorted(merged) if key[0] == task]
        (a.out / "replay" / "merged" / f"samples_{task}_merged.jsonl").write_text("\n".join(lines) + "\n")
    return merged


def lm_eval_leg(a: argparse.Namespace) -> dict:
    common = ["--model", "mamba-steered", "--model_args", a.model_args, "--tasks", a.tasks]
    common += ["--include_path", a.include_path, "--batch_size", a.batch_size, "--log_samples"]
    common += ["--metadata", a.metadata] if a.metadata else []
    walls, requests = {}, {}
    for n in (1,) if a.replay_only else (1, a.processes):
        out = a.out / f"p{n}"
        env = {**os.environ, "SSMSTEER_TIMING": str(out / "timing")}
        cmd = [
            *_launcher(n),
            str(HERE / "_timed_lm_eval.py"),
            *common,
            *(["--limit", a.limit] if a.limit else []),
        ]
        walls[n] = _run([*cmd, "--output_path", str(out)], out, env)
        requests[n] = _request_seconds(out / "timing")
    replay = _replay(a, common, a.out / "p1", a.gpus) if a.shard_replay or a.replay_only else None
    print(f"\nlm_eval --model mamba-steered --model_args {a.model_args} --tasks {a.tasks}")
    if a.replay_only:
        report = _compare_samples(_load(a.out / "p1")[1], replay, a.logprob_tolerance)
        report["wall_seconds"] = {"1": round(walls[1], 1)}
        print(f"one process against its documents split {a.processes} ways, each share run alone on one GPU:")
        _verdict(report, "batch composition")
        # what a different batch composition changes on one GPU is the measurement here, not a failure
        report["batch_composition_differing"] = report.pop("differing")
        return report
    report = compare(a.out / "p1", a.out / f"p{a.processes}", a.processes, a.logprob_tolerance)
    report["wall_seconds"] = {str(n): round(s, 1) for n, s in walls.items()}
    report["request_seconds"] = {str(n): None if s is None else round(s, 2) for n, s in requests.items()}
    report["speedup_wall"] = round(walls[1] / walls[a.processes], 2)
    if requests[1] and requests[a.processes]:
        report["speedup_requests"] = round(requests[1] / requests[a.processes], 2)
    if replay is not None:
        explain_by_replay(report, replay, _load(a.out / f"p{a.processes}")[1], a.logprob_tolerance)
    _table([(str(n), walls[n], requests[n]) for n in walls], report["documents"])
    _verdict(report, "lm_eval")
    if "replay" in report:
        replay = report["replay"]
        print(
            f"against the one-GPU replay of each rank's share (must be equal): identical documents "
            f"{replay['identical_documents']}/{replay['documents']}"
        )
    if report.get("batch_composition_differing"):
        print(
            "differing from one process as the replay does (batch composition): "
            + ", ".join(report["batch_composition_differing"])
        )
    print(f"metrics equal: {report['metrics_equal']}")
    return report


def explain_by_replay(report: dict, replay: dict, many: dict, logprob_tolerance: float) -> None:
    """With the one-GPU replay of the ranks' shares: the N-process run must equal it document by document
    (the same batches, the same answers; any difference is a fault of the launch). Then each document
    where N processes differ from one process is one that a different batch composition alone changes on
    one GPU: it is listed under ``batch_composition_differing`` instead of being a problem."""
    check = _compare_samples(replay, many, logprob_tolerance)
    report["replay"] = {k: v for k, v in check.items() if k != "problems"}
    if check["problems"] or check["differing"]:
        report["problems"] += [f"against the one-GPU replay of its shards: {p}" for p in check["problems"]]
        if check["differing"]:
            report["problems"].append(
                f"against the one-GPU replay of its shards: {_differing_problem(check['differing'])}"
            )
        return
    if report["differing"]:
        report["problems"].remove(_differing_problem(report["differing"]))
        report["batch_composition_differing"] = report["differing"]


def sweep_leg(a: argparse.Namespace) -> dict:
    grid = ["--layers", a.sweep_layers, "--sites", a.sweep_sites, "--scales", a.sweep_scales]
    common = ["--model_args", _without_steering(a.model_args), "--tasks", *a.sweep_tasks.split(",")]
    common += [*grid, "--device", a.device, "--batch_size", a.batch_size, "--include_path", a.include_path]
    metadata = a.sweep_metadata or a.metadata
    common += ["--metadata", metadata] if metadata else []
    common += ["--limit", a.limit] if a.limit else []
    walls = {}
    for n in (1, a.processes):
        out = a.out / f"sweep-p{n}"
        cmd = [*_launcher(n), "-m", "lm_eval_ssmsteer", "sweep", *common, "--out", str(out / "sweep")]
        walls[n] = _run(cmd, out)
    report = compare_sweeps(a.out / "sweep-p1" / "sweep", a.out / f"sweep-p{a.processes}" / "sweep")
    report["wall_seconds"] = {str(n): round(s, 1) for n, s in walls.items()}
    report["speedup_wall"] = round(walls[1] / walls[a.processes], 2)
    cells = {n: cells_seconds(a.out / f"sweep-p{n}" / "sweep") for n in walls}
    report["cells_seconds"] = {str(n): None if s is None else round(s, 1) for n, s in cells.items()}
    if cells[1] and cells[a.processes]:
        report["speedup_cells"] = round(cells[1] / cells[a.processes], 2)
    print(f"\nssmsteer sweep {' '.join(common)}")
    _table([(str(n), walls[n], cells[n]) for n in walls], report["documents"], busy="cell")
    _verdict(report, f"sweep ({report['cells']} cells)")
    print(f"leaderboards equal: {report['leaderboards_equal']}")
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--model-args", required=True)
    p.add_argument("--tasks", required=True)
    p.add_argument("--metadata", default=None)
    p.add_argument("--limit", default=None)
    p.add_argument("--batch-size", default="8")
    p.add_argument("--include-path", default=str(HERE.parent / "tasks"))
    p.add_argument("--logprob-tolerance", type=float, default=0.0, help="0: bitwise (default)")
    p.add_argument("--sweep-tasks", default=None, help="the sweep's tasks (default: --tasks)")
    p.add_argument("--sweep-metadata", default=None, help="the sweep's task metadata (default: --metadata)")
    p.add_argument("--sweep-layers", default=None)
    p.add_argument("--sweep-sites", default="delta")
    p.add_argument("--sweep-scales", default="2")
    p.add_argument("--device", default="cuda", help="the sweep's --device (each process its own GPU)")
    p.add_argument("--skip-lm-eval", action="store_true", help="only the sweep")
    p.add_argument(
        "--shard-replay",
        action="store_true",
        help="also run each rank's share of the documents alone in one process (one GPU) and hold the "
        "N-process run to it document by document; a difference from the one-process run that the replay "
        "shows too comes from the batch composition, and is reported as such instead of failing the run",
    )
    p.add_argument(
        "--replay-only",
        action="store_true",
        help="one GPU: the one-process run against the one-process replay of the N shares, no launch "
        "(what the batch composition alone changes)",
    )
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if a.processes < 2:
        p.error(f"--processes {a.processes}: the comparison is of one process against N >= 2")
    if a.replay_only and (a.skip_lm_eval or a.sweep_layers):
        p.error("--replay-only is the lm_eval leg alone, on one GPU: drop --skip-lm-eval and --sweep-layers")
    if a.skip_lm_eval and not a.sweep_layers:
        p.error("--skip-lm-eval leaves nothing to run without --sweep-layers")
    a.sweep_tasks = a.sweep_tasks or a.tasks
    import torch

    gpus = torch.cuda.device_count()
    if gpus < (0 if a.replay_only else a.processes):
        raise SystemExit(
            f"error: --processes {a.processes} needs as many GPUs; this machine has {gpus} "
            "(lm-eval shards documents only on accelerators)"
        )
    report = {"processes": a.processes, "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)]}
    a.gpus = 1 if a.replay_only else gpus  # --replay-only: every share on the one GPU
    legs = ([] if a.skip_lm_eval else [("lm_eval", lm_eval_leg)]) + (
        [("sweep", sweep_leg)] if a.sweep_layers else []
    )
    for name, leg in legs:
        report[name] = leg(a)
        # written after each leg, so that a call cut short keeps what it measured
        (a.out / "data_parallel.json").write_text(json.dumps(report, indent=1) + "\n")
    return 1 if any(report[name]["problems"] for name, _ in legs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
