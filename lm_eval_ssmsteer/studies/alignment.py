"""What the alignment studies (``needle``, ``copy``) share: every layer's LaTIM map of one document
(l2, ALTI) with their rollout, or its hidden attention, and the teacher-forced probability of each gold
token."""

from __future__ import annotations

import torch

from lm_eval_ssmsteer.interpret.attention import hidden_attention
from lm_eval_ssmsteer.interpret.capture import capture_layers
from lm_eval_ssmsteer.interpret.latim import latim_maps, latim_rows, rollout
from lm_eval_ssmsteer.mamba.arch import describe_model, mamba_blocks, mamba_mixers
from lm_eval_ssmsteer.mamba.mixer_math import mixer_internals

MAP_METHODS = ("l2", "alti", "attention")


def l2_maps(model, ids: torch.Tensor, rows: range | None = None, with_rollout: bool = True) -> dict:
    """Layer -> LaTIM l2 map of ``ids`` (its ``rows`` only, if given: (len(rows), l), else (l, l)) and,
    ``with_rollout``, "rollout" -> the rollout across every layer, which needs every layer's full map
    (l² cost); without it only ``rows`` are computed (``latim_rows``, cheap)."""
    blocks = mamba_blocks(model)
    rows = range(ids.shape[1]) if rows is None else rows
    captured = capture_layers(model, ids, list(range(len(blocks))))
    maps, block_maps = {}, []
    for layer, block in enumerate(blocks):
        internals = mixer_internals(block.mixer, captured[layer].mixer_input)
        if with_rollout:
            full = latim_maps(internals, ("l2",), block_input=captured[layer].block_input)
            block_maps.append(full["l2_block"])
            maps[layer] = full["l2"][rows.start : rows.stop]
        else:
            maps[layer] = latim_rows(internals, rows, ("l2",))["l2"]
    if with_rollout:
        maps["rollout"] = rollout(block_maps)[rows.start : rows.stop]
    return maps


def token_maps(model, ids: torch.Tensor, methods: tuple[str, ...] = MAP_METHODS) -> dict[str, dict]:
    """Method -> layer -> (l, l) token-to-token map of ``ids``, for every Mamba layer (a hybrid's by decoder
    index): LaTIM "l2" and "alti" (each with "rollout" -> their rollout across every layer, from the block
    maps that count the residual; not for a hybrid, whose attention layers have no such map) and
    "attention", the hidden attention (α averaged over channels, Ali et al.; no rollout: it has no residual
    term). One capture and one decomposition per layer serve every method."""
    unknown = [m for m in methods if m not in MAP_METHODS]
    if unknown or not methods:
        raise ValueError(f"map methods {unknown or list(methods)} are not among {', '.join(MAP_METHODS)}")
    latim_methods = tuple(m for m in methods if m != "attention")
    mixers = mamba_mixers(model)
    chained = describe_model(model).mamba_layers is None  # every layer a Mamba block: a rollout chains them
    captured = capture_layers(model, ids, list(mixers))
    maps: dict[str, dict] = {m: {} for m in methods}
    block_maps: dict[str, list] = {m: [] for m in latim_methods}
    for layer, mixer in mixers.items():
        internals = mixer_internals(mixer, captured[layer].mixer_input)
        if latim_methods:
            block_input = captured[layer].block_input if chained else None
            full = latim_maps(internals, latim_methods, block_input=block_input)
            for m in latim_methods:
                maps[m][layer] = full[m]
                if chained:
                    block_maps[m].append(full[m + "_block"])
        if "attention" in methods:
            maps["attention"][layer] = hidden_attention(internals, "mean")
    for m in latim_methods if chained else ():
        maps[m]["rollout"] = rollout(block_maps[m])
    return maps


@torch.no_grad()
def gold_probs(model, ids: torch.Tensor, predicting: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced, at each predicting position: the probability of the next (gold) token, and 1.0
    where it is the argmax, 0.0 elsewhere; both (len(predicting),)."""
    logits = model(input_ids=ids, use_cache=False).logits[0, predicting].float()
    gold = ids[0, [p + 1 for p in predicting]]
    probs = torch.softmax(logits, -1)[torch.arange(len(gold)), gold]
    return probs, (logits.argmax(-1) == gold).float()
