import os
import sys
from pathlib import Path

# Tiny models: two threads only add wake-up latency to ~µs-sized matmuls (16 ms vs 14 µs each on the
# 2-core CI machine), so tests and the lm_eval subprocesses they start run single-threaded.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
