"""What the `.pth` start-up hook costs a Python process that never uses lm_eval.

Prints a table over N runs: the hook's own import time as `python -X importtime` accounts it, and,
for scale, the median wall time of `python -c pass` with site-packages and of `python -S -c pass`.

    python benchmarks/startup.py [--runs 30]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time


def importtime_of_hook() -> int:
    """Cumulative microseconds spent importing lm_eval_ssmsteer modules at start-up."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True
    ).stderr
    total = 0
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
        if m and m.group(3) in ("lm_eval_ssmsteer", "lm_eval_ssmsteer.lmeval._autoload"):
            total = max(total, int(m.group(2)))
    return total


def wall(args: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(args, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs
    hook_us = [importtime_of_hook() for _ in range(runs)]
    with_hook = wall([sys.executable, "-c", "pass"], runs)
    # -S skips site.py entirely (no .pth files at all): the floor any start-up hook is measured against
    no_site = wall([sys.executable, "-S", "-c", "pass"], runs)
    print("| measurement | median |")
    print("|---|---|")
    hook_ms = statistics.median(hook_us) / 1000
    print(f"| hook's own import time (`-X importtime`, cumulative) | {hook_ms:.2f} ms |")
    print(f"| `python -c pass` (site-packages, all .pth files, hook included) | {with_hook:.1f} ms |")
    print(f"| `python -S -c pass` (no site-packages at all) | {no_site:.1f} ms |")


if __name__ == "__main__":
    main()
