"""generation_batches: a generation batch without its left padding (prompts of one length together, or
each prompt alone), laid out as HFLM reads a padded batch; `one` at any batch size equals batch size 1."""

from __future__ import annotations

import pytest
from lm_eval.api.instance import Instance
from tiny import ARCHITECTURES, save_tiny

from lm_eval_ssmsteer.lmeval.backend import GENERATION_BATCHES, MambaSteeredLM, generation_groups
from lm_eval_ssmsteer.lmeval.model_args import ModelArgsError

# byte-level tokenizer: one token a character; lengths 23, 9, 23, 14, 9, 31 (three of them shared)
TEXTS = [
    "the cat sat on the mat.",
    "one two t",
    "a quick brown fox jumps",
    "seven and one ",
    "x = y + 1",
    "lorem ipsum dolor sit amet, con",
]
GEN_KWARGS = {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}
STEER = {"steer_layer": 1, "steer_site": "delta", "steer_channels": "all", "steer_scale": 3.0}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model_dir(request, tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp(request.param), request.param, seed=5)


def _generate(model_dir, batch_size: int, mode: str, **model_args) -> list[str]:
    lm = MambaSteeredLM(
        pretrained=str(model_dir), device="cpu", batch_size=batch_size, generation_batches=mode, **model_args
    )
    requests = [Instance("generate_until", {}, (t, dict(GEN_KWARGS)), i) for i, t in enumerate(TEXTS)]
    return lm.generate_until(requests, disable_tqdm=True)


def test_groups():
    lengths = [23, 9, 23, 14, 9, 31]
    assert generation_groups(lengths, "same_length") == [[0, 2], [1, 4], [3], [5]]
    assert generation_groups(lengths, "one") == [[0], [1], [2], [3], [4], [5]]
    with pytest.raises(ValueError, match="padded"):
        generation_groups(lengths, "padded")


@pytest.mark.parametrize("steering", [{}, STEER], ids=["unsteered", "steered"])
def test_each_prompt_alone_equals_batch_size_one(model_dir, steering):
    alone = _generate(model_dir, 1, "padded", **steering)
    assert _generate(model_dir, 4, "one", **steering) == alone
    # same length without padding: rows of one length share a batch, the rest are alone
    assert _generate(model_dir, 6, "same_length", **steering) == alone
    assert any(alone), "the tiny model generated nothing: the comparison would be empty"


def test_unpadded_layout_matches_hflm(model_dir):
    """The tensor handed back to HFLM: the padded context first, each row's new tokens right after it."""
    lm = MambaSteeredLM(pretrained=str(model_dir), device="cpu", batch_size=6, generation_batches="one")
    context, mask = lm.tok_batch_encode(TEXTS)
    width = context.shape[1]
    out = lm._model_generate(context, width + 5, ["\n\n"], attention_mask=mask, do_sample=False)
    assert (out[:, :width] == context).all()
    for row, text in enumerate(TEXTS):
        ids, one_mask = lm.tok_batch_encode([text])
        alone = lm._model_generate(ids, ids.shape[1] + 5, ["\n\n"], attention_mask=one_mask, do_sample=False)
        new = alone[0, ids.shape[1] :]
        assert out[row, width : width + len(new)].tolist() == new.tolist()
        assert (out[row, width + len(new) :] == lm.tokenizer.pad_token_id).all()


def test_recorded_in_results_config(model_dir):
    lm = MambaSteeredLM(pretrained=str(model_dir), device="cpu", generation_batches="same_length")
    assert lm.get_model_info()["generation_batches"] == "same_length"
    assert MambaSteeredLM(pretrained=str(model_dir), device="cpu").get_model_info()["generation_batches"] == (
        "padded"
    )


def test_bad_value_fails_before_loading():
    with pytest.raises(ModelArgsError) as error:
        MambaSteeredLM(pretrained="/nonexistent/folder", generation_batches="unpadded")
    message = str(error.value)
    assert "generation_batches='unpadded'" in message
    for name in GENERATION_BATCHES:
        assert name in message
