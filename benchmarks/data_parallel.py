"""Data-parallel evaluation with steering: N processes (`accelerate launch`) against one, side by side.

    python benchmarks/data_parallel.py --processes 2 --out OUT \\
        --model-args pretrained=MODEL,dtype=bfloat16,steer_layer=2,steer_site=B,steer_scale=2.0 \\
        --tasks ssm_passkey,ssmq_copy --metadata '{"max_seq_lengths": [8192]}'

Runs `python -m lm_eval --model mamba-steered` once in one process and once under
`accelerate launch --num_processes N`, both with `--log_samples`, then compares them document by document
(same task, doc_id and document hash): the filtered responses, the per-document metrics and, for
loglikelihood requests, the log-probabilities (the largest difference is printed; 0 means bitwise). It
prints one table (wall seconds, documents a second, speed-up) and writes OUT/data_parallel.json; it exits
1 when the outputs differ or the N-process results do not record world_size N.

lm-eval shards documents across processes only on accelerators (HFLM keeps world size 1 on a CPU, where
every process would evaluate everything), so this needs N GPUs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _run(cmd: list[str], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = (out / "log.txt").read_text()[-3000:]
        raise SystemExit(f"error: {' '.join(cmd[:6])} ... exited {done.returncode}:\n{tail}")
    return seconds


def _load(folder: Path) -> tuple[dict, dict[tuple[str, int], dict]]:
    [results] = sorted(folder.rglob("results_*.json"))[-1:]
    samples = {}
    for path in folder.rglob("samples_*.jsonl"):
        for line in path.read_text().splitlines():
            s = json.loads(line)
            task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
            samples[(task, s["doc_id"])] = s
    return json.loads(results.read_text()), samples


def _logprobs(sample: dict) -> list[float]:
    out = []
    for resp in sample["resps"]:
        for r in resp:
            if isinstance(r, list) and r and isinstance(r[0], int | float):
                out.append(float(r[0]))
    return out


def compare(one: Path, many: Path, processes: int) -> dict:
    r1, s1 = _load(one)
    rn, sn = _load(many)
    problems = []
    if rn["config"].get("world_size") != processes:
        problems.append(f"world_size recorded {rn['config'].get('world_size')}, launched {processes}")
    if s1.keys() != sn.keys():
        problems.append(f"documents differ: {len(s1.keys() ^ sn.keys())} in one run only")
    same, max_dlogp = 0, 0.0
    for key in sorted(s1.keys() & sn.keys()):
        a, b = s1[key], sn[key]
        if a["doc_hash"] != b["doc_hash"]:
            problems.append(f"{key}: different documents")
            continue
        lp_a, lp_b = _logprobs(a), _logprobs(b)
        if lp_a:
            max_dlogp = max(max_dlogp, max(abs(x - y) for x, y in zip(lp_a, lp_b, strict=True)))
        if a["filtered_resps"] == b["filtered_resps"] and lp_a == lp_b:
            same += 1
    metrics_equal = r1["results"] == rn["results"]
    if not metrics_equal:
        problems.append("aggregated metrics differ")
    return {
        "documents": len(s1),
        "identical_documents": same,
        "max_abs_logprob_difference": max_dlogp,
        "metrics_equal": metrics_equal,
        "problems": problems,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--model-args", required=True)
    p.add_argument("--tasks", required=True)
    p.add_argument("--metadata", default=None)
    p.add_argument("--limit", default=None)
    p.add_argument("--batch-size", default="8")
    p.add_argument("--include-path", default=str(Path(__file__).resolve().parents[1] / "tasks"))
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    import torch

    gpus = torch.cuda.device_count()
    if gpus < a.processes:
        raise SystemExit(
            f"error: --processes {a.processes} needs as many GPUs; this machine has {gpus} "
            "(lm-eval shards documents only on accelerators)"
        )
    common = ["--model", "mamba-steered", "--model_args", a.model_args, "--tasks", a.tasks]
    common += ["--include_path", a.include_path, "--batch_size", a.batch_size, "--log_samples"]
    common += ["--metadata", a.metadata] if a.metadata else []
    common += ["--limit", a.limit] if a.limit else []
    runs = {}
    for n in (1, a.processes):
        out = a.out / f"p{n}"
        launcher = (
            [sys.executable, "-m"] if n == 1 else ["accelerate", "launch", "--num_processes", str(n), "-m"]
        )
        runs[n] = _run([*launcher, "lm_eval", *common, "--output_path", str(out)], out)
    report = compare(a.out / "p1", a.out / f"p{a.processes}", a.processes)
    docs = report["documents"]
    report["seconds"] = {str(n): round(s, 1) for n, s in runs.items()}
    report["speedup"] = round(runs[1] / runs[a.processes], 2)
    print("| processes | wall s | documents/s | speed-up |")
    print("|---|---|---|---|")
    for n, s in runs.items():
        print(f"| {n} | {s:.1f} | {docs / s:.2f} | {runs[1] / s:.2f}x |")
    print(
        f"identical documents: {report['identical_documents']}/{docs}; largest |log-prob difference|: "
        f"{report['max_abs_logprob_difference']:.3g}; metrics equal: {report['metrics_equal']}"
    )
    for problem in report["problems"]:
        print(f"PROBLEM: {problem}")
    (a.out / "data_parallel.json").write_text(json.dumps(report, indent=1) + "\n")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
