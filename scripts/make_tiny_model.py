"""Build the `tiny-random-mamba` smoke model (random weights, byte-level tokenizer) into a folder.

The package ships one (lm_eval_ssmsteer/models/tiny-random-mamba) so that `lm_eval --model
mamba-steered` runs out of the box; its scores are chance level by construction. The shipped copy is
rewritten only when asked: --into-package, or --out naming its folder. ``--arch`` builds a tiny random
model of another architecture of tests/tiny.py instead, e.g. a hybrid (never into the package).

    python scripts/make_tiny_model.py --out /tmp/tiny-random-mamba
    python scripts/make_tiny_model.py --into-package
    python scripts/make_tiny_model.py --arch granitemoehybrid --out /tmp/tiny-granite
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "lm_eval_ssmsteer" / "models" / "tiny-random-mamba"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="folder to write (created)")
    where.add_argument(
        "--into-package", action="store_true", help=f"rewrite the shipped copy ({SHIPPED.relative_to(ROOT)})"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0, as shipped)")
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import ARCHITECTURES, HYBRIDS, save_tiny

    parser.add_argument(
        "--arch",
        choices=ARCHITECTURES + HYBRIDS,
        default="mamba",
        help="model type (default: mamba, as shipped)",
    )
    args = parser.parse_args(argv)
    if args.into_package and args.arch != "mamba":
        parser.error("--into-package rewrites the shipped tiny-random-mamba: only --arch mamba")
    out = save_tiny(SHIPPED if args.into_package else args.out, args.arch, seed=args.seed)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
