"""The best training run per architecture in a folder of runs (lm_eval_ssmsteer/training).

    python scripts/pick_runs.py RUNS            # the chosen run names, one per architecture
    python scripts/pick_runs.py RUNS --table    # every run's monitor scores, per task (exact/token)

A run's score is the mean over the monitored tasks of (exact match + per-token accuracy) / 2 on the
calibration split, from its last stage (runs/<name>/state.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def scores(runs: Path) -> dict[str, dict]:
    out = {}
    for state in sorted(runs.glob("*/state.json")):
        s = json.loads(state.read_text())
        monitor = s.get("monitor") or {}
        if monitor:
            mean = sum((v["exact"] + v["token"]) / 2 for v in monitor.values()) / len(monitor)
            out[state.parent.name] = {"arch": s["config"]["arch"], "score": mean, "state": s}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path)
    p.add_argument("--table", action="store_true")
    a = p.parse_args()
    found = scores(a.runs)
    if a.table:
        for name, r in sorted(found.items(), key=lambda kv: -kv[1]["score"]):
            s = r["state"]
            stage = s["stages"][-1]
            print(
                f"{name}: {r['arch']} score {r['score']:.3f} step {s['step']} tokens {s['tokens_seen']:.3g} "
                f"{stage['tokens_per_second']} tok/s loss {s['loss_avg']:.4f}"
            )
            tasks = s["monitor"].items()
            print("   " + " ".join(f"{t[4:]}={v['exact']:.2f}/{v['token']:.2f}" for t, v in tasks))
        return 0
    best: dict[str, tuple[float, str]] = {}
    for name, r in found.items():
        if r["arch"] not in best or r["score"] > best[r["arch"]][0]:
            best[r["arch"]] = (r["score"], name)
    print(" ".join(name for _, name in sorted(best.values(), key=lambda x: x[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
