"""The ``mamba-steered`` lm-eval backend: HFLM plus a steering spec applied around every model call.

The backend glues, it does not compute: loading is ``loading``, validation is ``model_args``, ``spec`` and
``sites``, steering is ``hooks.steer``. Without a spec no hook is installed and it behaves exactly like
``hf``.

model_args (besides everything ``hf`` takes):
    steer=PATH.json | PRESET | '{...inline JSON...}'
    steer_layer=20,steer_site=mixer_out,steer_channels=[4,38],steer_scale=5.0[,steer_positions=all]

Prompts are never cut unless ``max_length`` is given: a state-space model has no positional limit, while
``hf`` falls back to 2,048 tokens for a config that names no context length (every Mamba config).
"""

from __future__ import annotations

import inspect
import logging
from contextlib import nullcontext
from functools import cache
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import normalize_gen_kwargs

import lm_eval_ssmsteer.mamba.stable  # noqa: F401  (registers model_type "stable_mamba" with the Auto classes)
from lm_eval_ssmsteer import __version__
from lm_eval_ssmsteer.lmeval.model_args import check_model_args
from lm_eval_ssmsteer.loading import NATIVE_TOKENIZER, prepare_pretrained
from lm_eval_ssmsteer.log_filters import drop_cpu_kernel_fallback, hflm_cut_lines_dropped
from lm_eval_ssmsteer.mamba.arch import architecture, describe_model
from lm_eval_ssmsteer.mamba.fastscan import fast_scan_refusal, use_fast_scan
from lm_eval_ssmsteer.spec import SpecError, SteeringSpec
from lm_eval_ssmsteer.steering import SteeringPlan, steer

log = logging.getLogger(__name__)

# what `max_length` is without a user value: larger than any prompt, small enough for slice arithmetic
_NO_LIMIT = 2**62
# lm-eval passes these to every backend, whatever its signature
_ALWAYS_PASSED = ("batch_size", "max_batch_size", "device")


def _warn_about_cuts(request_type: str, lengths: list[int], limits: list[int], max_length: int) -> None:
    """One warning that counts the prompts of a call that `max_length` cuts (lengths, limits in tokens)."""
    cut = [(n, limit) for n, limit in zip(lengths, limits, strict=True) if n > limit]
    if not cut:
        return
    to = " or ".join(str(limit) for limit in sorted({limit for _, limit in cut}))
    log.warning(
        "max_length=%d cut %d of %d %s prompts to their last %s tokens (the longest had %d): a state-space "
        "model has no positional limit; leave max_length unset to keep whole prompts",
        max_length,
        len(cut),
        len(lengths),
        request_type,
        to,
        max(n for n, _ in cut),
    )


@register_model("mamba-steered")
class MambaSteeredLM(HFLM):
    """HFLM for Mamba-family models (Mamba, Mamba-2, FalconMamba and the Mamba layers of the hybrids:
    Bamba, Granite 4.0-H, Falcon-H1, Nemotron-H, Zamba2, Jamba) with optional activation steering."""

    def __init__(
        self,
        pretrained: Any = "state-spaces/mamba-130m-hf",
        steer: Any = None,
        steer_layer: Any = None,
        steer_site: str | None = None,
        steer_channels: Any = None,
        steer_scale: Any = None,
        steer_positions: str | None = None,
        fast_scan: bool | str = False,
        **kwargs: Any,
    ) -> None:
        # Everything that can be checked without the model (pretrained, dtype, misspelt steer_* keys, the
        # spec itself) fails here, before loading.
        self.steering_spec = check_model_args(
            {
                "pretrained": pretrained,
                "steer": steer,
                "steer_layer": steer_layer,
                "steer_site": steer_site,
                "steer_channels": steer_channels,
                "steer_scale": steer_scale,
                "steer_positions": steer_positions,
                **kwargs,
            }
        )
        self._requested_model = pretrained if isinstance(pretrained, str) else type(pretrained).__name__
        if isinstance(pretrained, str):
            pretrained, native = prepare_pretrained(pretrained)
            if native and kwargs.get("tokenizer") is None:
                kwargs["tokenizer"] = NATIVE_TOKENIZER
        else:
            describe_model(pretrained)
        super().__init__(pretrained=pretrained, **kwargs)
        # the batch length that batch_size=auto probes with no max_length, until a call measures its prompts
        self._longest_prompt = self._DEFAULT_MAX_LENGTH
        self.arch = describe_model(self.model)
        self.set_steering(self.steering_spec)
        self.fast_scan = self._check_fast_scan(fast_scan)
        if self.model.device.type == "cpu":
            drop_cpu_kernel_fallback()

    def set_steering(self, spec: SteeringSpec | None) -> None:
        """Steer every later call with ``spec`` (None: unsteered), on the model already loaded: the plan is
        resolved against the model once, here (shape checks included), and applied to every call. A sweep
        swaps specs between evaluations this way; results record the spec in effect (get_model_info)."""
        self.steering_plan = None if spec is None else SteeringPlan.build(self.model, spec)
        self.steering_spec = spec

    def _check_fast_scan(self, value: bool | str) -> bool:
        """``fast_scan=True``: lm_eval_ssmsteer.mamba.fastscan instead of transformers' scan loop, where
        ``fast_scan_refusal`` allows it."""
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise SpecError(f"fast_scan={value!r}: allowed values are true or false")
            value = value.lower() in ("true", "1")
        if not value:
            return False
        refusal = fast_scan_refusal(self.model)
        if refusal is not None:
            raise SpecError(f"fast_scan=True: {refusal}")
        return True

    def _scan(self):
        return use_fast_scan() if self.fast_scan else nullcontext()

    def _get_config(self, pretrained: str, **kwargs: Any) -> None:
        super()._get_config(pretrained, **kwargs)
        architecture(self._config)  # a non-Mamba model fails before its weights are loaded

    @property
    def max_length(self) -> int:
        return self._max_length or _NO_LIMIT

    def _detect_batch_size(self, requests=None, pos: int = 0):
        if not requests and not self._max_length:
            # HFLM would probe a batch as long as max_length; probe one as long as the longest prompt
            requests = [(None, [self.eot_token_id] * self._longest_prompt, [self.eot_token_id])]
        return super()._detect_batch_size(requests, pos)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        if self._max_length:
            # HFLM feeds (context + continuation)[:-1], keeping the last max_length tokens
            lengths = [len(context) + len(continuation) - 1 for _, context, continuation in requests]
            _warn_about_cuts("loglikelihood", lengths, [self._max_length] * len(lengths), self._max_length)
        with hflm_cut_lines_dropped():
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        if self.batch_size == "auto" and not self._max_length:
            # with no max_length a document is one window: its tokens after the prefix token
            self._longest_prompt = max(self._prompt_lengths(requests), default=1)
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        if self._max_length:
            # HFLM keeps room for the generated tokens: a prompt keeps max_length - max_gen_toks tokens
            gen_kwargs = [normalize_gen_kwargs(dict(r.args[1]), self.max_gen_toks) for r in requests]
            limits = [self._max_length - kwargs["max_gen_toks"] for kwargs in gen_kwargs]
            _warn_about_cuts("generate_until", self._prompt_lengths(requests), limits, self._max_length)
        elif self.batch_size == "auto":
            self._longest_prompt = max(self._prompt_lengths(requests), default=1)
        with hflm_cut_lines_dropped():
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def _prompt_lengths(self, requests) -> list[int]:
        return [len(self.tok_encode(r.args[0])) for r in requests]

    def _model_call(self, inps, attn_mask=None, labels=None):
        with self._scan(), steer(self.model, self.steering_plan):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        with self._scan(), steer(self.model, self.steering_plan):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def get_model_info(self) -> dict[str, Any]:
        info = super().get_model_info()
        spec = self.steering_spec
        info.update(
            {
                "ssmsteer_version": __version__,
                "ssmsteer_model": self._requested_model,
                "architecture": self.arch.architecture,
                "model_fingerprint": self.arch.fingerprint(),
                "steering_spec": None if spec is None else spec.to_dict(),
                "steering_spec_sha256": None if spec is None else spec.sha256,
                "fast_scan": self.fast_scan,
                # data-parallel runs (accelerate launch / torchrun): every process steers its own replica
                "world_size": self.world_size,
            }
        )
        return info


@cache
def model_argument_names() -> frozenset[str]:
    """Every keyword that ``--model_args`` may give this backend: the parameters of its and HFLM's
    ``__init__`` (read from their signatures) and what lm-eval passes to every backend."""
    names = set(_ALWAYS_PASSED)
    for cls in MambaSteeredLM.__mro__:
        if "__init__" in vars(cls):
            params = inspect.signature(cls.__init__).parameters.values()
            names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    names.discard("self")
    return frozenset(names)
