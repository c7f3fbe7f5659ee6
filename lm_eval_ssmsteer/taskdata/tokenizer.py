"""The project's own tokenizer: one token per character (newline + printable ASCII), built in code.

Every character of the task texts is its own token, so a string's token count is its length (what
``core.char_count`` assumes), copying is never blurred by merges, and decoding round-trips exactly.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))
assert set(string.printable) - set("\t\r\x0b\x0c") <= set(CHARACTERS)


def build_tokenizer() -> Tokenizer:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(CHARACTERS))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def hf_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer wrapped for transformers (saved beside each reference model)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(),
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=1 << 20,
    )


def save(folder: str | Path) -> None:
    hf_tokenizer().save_pretrained(str(folder))
