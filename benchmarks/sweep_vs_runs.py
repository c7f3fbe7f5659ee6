"""N steering specs by one `ssmsteer sweep` against N separate `lm_eval` runs: wall time and peak memory.

    python benchmarks/sweep_vs_runs.py --layers 2,3 --sites delta --scales 0.8,1.25 --limit 4

Both evaluate the same specs (the sweep's grid; the separate runs take its spec files as steer=) on the same
tasks and documents, one process after the other. Each is a child process, measured from outside: wall
time, and peak resident memory (ru_maxrss from wait4). The table ends with the speed-up and whether every
document scored the same in both (doc, prompt and target hashes, responses and metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measured(command: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of ``command`` run to completion; exits on failure."""
    started = time.perf_counter()
    with log.open("w") as stream:
        proc = subprocess.Popen(command, stdout=stream, stderr=stream)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(command)}; see {log}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def documents(folder: Path) -> dict[str, list]:
    """Per task, what each document got: hashes, responses, metrics (dates and paths left out)."""
    found = {}
    for path in sorted(folder.rglob("samples_*.jsonl")):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        keep = ("doc_id", "doc_hash", "prompt_hash", "target_hash", "filtered_resps", "metrics")
        found[task] = sorted(
            ({k: s[k] for k in keep} | {m: s[m] for m in s["metrics"]} for s in lines),
            key=lambda s: s["doc_id"],
        )
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_args", default="pretrained=ref-mamba1,fast_scan=True")
    p.add_argument("--tasks", default="ssmsteer_quick")
    p.add_argument("--layers", default="2,3")
    p.add_argument("--sites", default="delta")
    p.add_argument("--scales", default="0.8,1.25")
    p.add_argument("--limit", default="4", help="documents per task")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch_size", default="8")
    p.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sweep_vs_runs_"))
    out.mkdir(parents=True, exist_ok=True)
    common = ["--tasks", args.tasks, "--device", args.device, "--batch_size", args.batch_size]
    common += ["--limit", args.limit]

    sweep = [sys.executable, "-m", "lm_eval_ssmsteer", "sweep", "--model_args", args.model_args, *common]
    sweep += ["--layers", args.layers, "--sites", args.sites, "--scales", args.scales, "--no-unsteered"]
    sweep_wall, sweep_rss = measured([*sweep, "--out", str(out / "sweep")], out / "sweep.log")
    specs = sorted((out / "sweep" / "specs").glob("*.json"))

    runs = []
    for spec in specs:
        model_args = f"{args.model_args},steer={spec}"
        command = [sys.executable, "-m", "lm_eval", "--model", "mamba-steered", "--model_args", model_args]
        command += [*common, "--log_samples", "--output_path", str(out / "runs" / spec.stem)]
        runs.append(measured(command, out / f"run_{spec.stem}.log"))
    runs_wall = sum(wall for wall, _ in runs)
    runs_rss = max(rss for _, rss in runs)
    same = all(
        documents(out / "sweep" / "cells" / spec.stem) == documents(out / "runs" / spec.stem)
        for spec in specs
    )

    n = len(specs)
    grid = f"{args.layers} × {args.sites} × {args.scales}"
    print(f"{n} specs ({grid}), --tasks {args.tasks} --limit {args.limit}, --device {args.device}")
    print(f"--batch_size {args.batch_size}, --model_args {args.model_args}; folder {out}\n")
    table = [
        ("`ssmsteer sweep`", 1, sweep_wall, f"{sweep_rss:.0f} MiB"),
        (f"{n} × `lm_eval`", n, runs_wall, f"{runs_rss:.0f} MiB (the largest)"),
    ]
    print("| | processes and model loads | wall time | per spec | peak RSS |")
    print("|---|---|---|---|---|")
    for name, loads, wall, rss in table:
        print(f"| {name} | {loads} | {wall:.1f} s | {wall / n:.1f} s | {rss} |")
    same_text = "yes" if same else "NO"
    print(f"\nspeed-up: {runs_wall / sweep_wall:.2f}×; every document scored the same: {same_text}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
