"""A mamba-130m-shaped Mamba-1 with random weights (seed 0) and the GPT-NeoX tokenizer, for the GPU scripts.

python3 scripts/gpu/make_130m_random.py FOLDER NEOX_TOKENIZER_DIR
"""

import sys

import torch
from transformers import AutoTokenizer, MambaConfig, MambaForCausalLM

folder, neox = sys.argv[1:]
torch.manual_seed(0)
config = MambaConfig(
    vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, expand=2,
    pad_token_id=0, bos_token_id=0, eos_token_id=0,
)  # fmt: skip
MambaForCausalLM(config).save_pretrained(folder)
tok = AutoTokenizer.from_pretrained(neox)
tok.pad_token = tok.eos_token
tok.save_pretrained(folder)
