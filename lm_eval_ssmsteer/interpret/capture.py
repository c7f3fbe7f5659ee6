"""Finding a model's Mamba mixers, validating user-given layers and token positions, and capturing what
each mixer receives (forward pre-hooks, always removed). A layer is a decoder layer index; in a hybrid
only its Mamba layers have mixers to capture."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lm_eval_ssmsteer.mamba.arch import mamba_mixers
from lm_eval_ssmsteer.mamba.mixer_math import MixerInternals, mixer_internals


def check_layers(layers: Iterable[int], n_layers: int) -> tuple[int, ...]:
    """Validate layer indices (negative ones count from the end); returns them non-negative."""
    checked = []
    for layer in layers:
        if not -n_layers <= layer < n_layers:
            raise ValueError(
                f"layer {layer} does not exist: the model has {n_layers} layers (0-{n_layers - 1})"
            )
        checked.append(layer % n_layers)
    if not checked:
        raise ValueError(f"no layers given: choose among 0-{n_layers - 1}")
    return tuple(checked)


def check_mamba_layers(model: nn.Module, layers: Iterable[int] | None) -> tuple[int, ...]:
    """Validate decoder layer indices that must hold a Mamba mixer (None: every Mamba layer)."""
    mamba = tuple(mamba_mixers(model))
    n_layers = len(model.base_model.layers)
    if layers is None:
        return mamba
    checked = check_layers(layers, n_layers)
    plain = [layer for layer in checked if layer not in mamba]
    if plain:
        raise ValueError(
            f"layer {plain[0]} has no Mamba mixer (an attention or MLP layer); the Mamba layers are "
            f"{', '.join(map(str, mamba))}"
        )
    return checked


def layer_window(start: int, size: int, n_layers: int) -> tuple[int, ...]:
    """Layers start..start+size-1, refusing an empty window or one that runs past the last layer."""
    if size < 1:
        raise ValueError(f"the layer window is empty (size {size}): the size must be at least 1")
    if not 0 <= start < n_layers:
        raise ValueError(
            f"window start {start} does not exist: the model has {n_layers} layers (0-{n_layers - 1})"
        )
    if start + size > n_layers:
        raise ValueError(
            f"window of {size} layers starting at {start} goes past the last layer {n_layers - 1}: "
            f"with {n_layers} layers the start must be 0-{n_layers - size}"
            if size <= n_layers
            else f"window of {size} layers is larger than the model ({n_layers} layers)"
        )
    return tuple(range(start, start + size))


def check_positions(positions: Sequence[int], length: int, what: str) -> tuple[int, ...]:
    """Validate token indices (negative ones count from the end); returns sorted unique non-negative ones."""
    for pos in positions:
        if not -length <= pos < length:
            raise ValueError(
                f"{what} token index {pos} is out of range: the input has {length} tokens "
                f"(0-{length - 1}, or -{length}..-1 from the end)"
            )
    return tuple(sorted({pos % length for pos in positions}))


@dataclass
class LayerCapture:
    """What one block saw: block_input (b, l, d_model), mixer_input (normed), mixer_output."""

    block_input: torch.Tensor
    mixer_input: torch.Tensor
    mixer_output: torch.Tensor


@torch.no_grad()
def capture_layers(
    model: nn.Module, input_ids: torch.Tensor, layers: Iterable[int]
) -> dict[int, LayerCapture]:
    """Run the model once (no cache) and record each chosen block's input, mixer input and output."""
    blocks, mixers = model.base_model.layers, mamba_mixers(model)
    layers = check_mamba_layers(model, layers)
    seen: dict[int, dict[str, torch.Tensor]] = {i: {} for i in layers}
    handles = []

    def keep_input(layer: int, key: str):
        def hook(module, args, kwargs):  # the hybrids' layers pass hidden_states by keyword
            seen[layer][key] = args[0] if args else kwargs["hidden_states"]

        return hook

    def keep_output(layer: int):
        def hook(module, args, output):
            seen[layer]["mixer_output"] = output

        return hook

    try:
        for i in layers:
            handles.append(
                blocks[i].register_forward_pre_hook(keep_input(i, "block_input"), with_kwargs=True)
            )
            handles.append(
                mixers[i].register_forward_pre_hook(keep_input(i, "mixer_input"), with_kwargs=True)
            )
            handles.append(mixers[i].register_forward_hook(keep_output(i)))
        model(input_ids=input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {i: LayerCapture(**{k: t.detach().float() for k, t in seen[i].items()}) for i in layers}


def layer_internals(
    model: nn.Module, input_ids: torch.Tensor, layers: Iterable[int]
) -> dict[int, MixerInternals]:
    """Mixer internals of each chosen layer for one forward pass of input_ids (1, l)."""
    mixers = mamba_mixers(model)
    captured = capture_layers(model, input_ids, layers)
    return {i: mixer_internals(mixers[i], c.mixer_input) for i, c in captured.items()}
