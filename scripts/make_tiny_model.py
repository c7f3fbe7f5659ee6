"""Rebuild the bundled `tiny-random-mamba` smoke model (random weights, byte-level tokenizer).

It exists so that `lm_eval --model mamba-steered` runs out of the box before any trained reference
model is present; its scores are chance level by construction.

    python scripts/make_tiny_model.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny import save_tiny  # noqa: E402

if __name__ == "__main__":
    out = save_tiny(ROOT / "lm_eval_ssmsteer" / "models" / "tiny-random-mamba", "mamba", seed=0)
    print(f"wrote {out}")
