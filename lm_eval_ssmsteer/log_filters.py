"""The log lines the plugin silences, each with its reason; one small filter drops them.

- HFLM's truncation lines (one per request or batch): the backend reports cuts once per call instead.
- lm-eval's "Custom kwargs can be passed to `--metadata`" hint, logged once per task built by a
  ``custom_dataset`` function (9 times for ``ssmsteer_longctx``): for this package's tasks,
  ``taskdata.harness`` says once per run which defaults are used.
- transformers' "`selective_scan_fn` is falling back to its reference PyTorch implementation because
  `mamba_ssm` is not installed" (5.25: "is either not installed or doesn't support the device of the
  inputs"; the same for ``causal_conv1d``): the mamba-ssm and causal-conv1d
  kernels are CUDA-only, so on a CPU the fallback is expected (docs/gpu.md). Silenced once the backend
  has loaded a model on the CPU; every other transformers warning stays.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

HFLM_LOGGER = "lm_eval.models.huggingface"
HFLM_CUT_LINES = re.compile(r"^(Combined length of context|Left truncation applied)")
METADATA_HINT_LOGGER = "lm_eval.api.task"
METADATA_HINT = re.compile(r"^(\S+): Custom kwargs can be passed to `--metadata`")
KERNEL_FALLBACK_LOGGER = "transformers.integrations.hub_kernels"
# "... because `mamba_ssm` is not installed" up to 5.24, "... is either not installed or doesn't support the
# device of the inputs" from 5.25
KERNEL_FALLBACK = re.compile(
    r"is falling back to its reference PyTorch implementation because `(causal_conv1d|mamba_ssm)` is "
    r"(either )?not installed"
)


class DropLines(logging.Filter):
    """Drops the records whose message matches ``pattern`` (and, if given, satisfies ``only``)."""

    def __init__(self, pattern: re.Pattern[str], only: Callable[[re.Match[str]], bool] | None = None):
        super().__init__()
        self.pattern = pattern
        self.only = only

    def filter(self, record: logging.LogRecord) -> bool:
        match = self.pattern.search(record.getMessage())
        return match is None or (self.only is not None and not self.only(match))


def _install(logger_name: str, dropper: DropLines) -> None:
    """Adds ``dropper`` to the logger unless a filter for the same lines is already there."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, DropLines) and f.pattern is dropper.pattern for f in logger.filters):
        logger.addFilter(dropper)


def drop_metadata_hint(is_ours: Callable[[str], bool]) -> None:
    """Silences lm-eval's ``--metadata`` hint for the tasks ``is_ours`` accepts (by task name)."""
    _install(METADATA_HINT_LOGGER, DropLines(METADATA_HINT, only=lambda match: is_ours(match.group(1))))


def drop_cpu_kernel_fallback() -> None:
    _install(KERNEL_FALLBACK_LOGGER, DropLines(KERNEL_FALLBACK))


@contextmanager
def hflm_cut_lines_dropped() -> Iterator[None]:
    logger = logging.getLogger(HFLM_LOGGER)
    dropper = DropLines(HFLM_CUT_LINES)
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)
