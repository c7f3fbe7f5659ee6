"""The one way this package replaces a function inside a modeling module: swap a module-level name.

transformers' Mamba mixers call module-level functions (the scans, the convolutions, the fused training
path), each bound at import to the mamba-ssm kernel or its torch reference. Steering, the fast CPU scan
and training without causal-conv1d all work by swapping such names in the module's globals and putting
the originals back afterwards, exceptions included:
- ``swapped(module_dict, replacements)``: for a ``with`` block;
- ``swap_during_calls(module, module_dict, replacements)``: only while ``module`` runs (hooks), wrapping
  what the module holds at each call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def _swap(module_dict: dict[str, Any], replacements: dict[str, Callable]) -> dict[str, Any]:
    """Put ``replacements`` in; return what they replaced."""
    missing = [name for name in replacements if name not in module_dict]
    if missing:
        raise KeyError(f"{module_dict.get('__name__', 'module')} has no {missing} to replace")
    saved = {name: module_dict[name] for name in replacements}
    module_dict.update(replacements)
    return saved


@contextmanager
def swapped(module_dict: dict[str, Any], replacements: dict[str, Callable]) -> Iterator[None]:
    saved = _swap(module_dict, replacements)
    try:
        yield
    finally:
        module_dict.update(saved)


class _RestoreLeftovers:
    """A handle whose ``remove`` puts back what a call interrupted between its hooks left swapped."""

    def __init__(self, module_dict: dict[str, Any], stack: list[dict[str, Any]]):
        self.module_dict, self.stack = module_dict, stack

    def remove(self) -> None:
        while self.stack:
            self.module_dict.update(self.stack.pop())


def swap_during_calls(
    module: Any, module_dict: dict[str, Any], replacements: Callable[[dict[str, Any]], dict[str, Callable]]
) -> list:
    """Handles (each with ``remove()``) of hooks that swap ``replacements(module_dict)`` in while ``module``
    runs. ``replacements`` gets the module's globals as they are when the call starts, so a wrapper wraps
    whatever is there then (another swap's wrapper included): two swaps on one module compose, the
    later-installed outside, and are undone in reverse order (the post-hook is prepended)."""
    stack: list[dict[str, Any]] = []

    def swap_in(mod, args):
        stack.append(_swap(module_dict, replacements(module_dict)))

    def swap_out(mod, args, output):
        if stack:
            module_dict.update(stack.pop())

    return [
        module.register_forward_pre_hook(swap_in),
        module.register_forward_hook(swap_out, always_call=True, prepend=True),
        _RestoreLeftovers(module_dict, stack),
    ]


def returns_none(*args: Any, **kwargs: Any) -> None:
    """Stands in for a fused kernel: transformers' mixers take their unfused path when it returns None."""
    return None
