"""The ``mamba-steered`` lm-eval backend: HFLM plus a steering spec applied around every model call.

The backend glues, it does not compute: loading is ``loading``, validation is ``spec``/``sites``,
steering is ``hooks.steer``. Without a spec no hook is installed and it behaves exactly like ``hf``.

model_args (besides everything ``hf`` takes):
    steer=PATH.json | PRESET | '{...inline JSON...}'
    steer_layer=20,steer_site=mixer_out,steer_channels=[4,38],steer_scale=5.0[,steer_positions=all]
"""

from __future__ import annotations

import ast
import inspect
from contextlib import nullcontext
from functools import cache
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

import lm_eval_ssmsteer.stable_mamba  # noqa: F401  (registers model_type "stable_mamba" with the Auto classes)
from lm_eval_ssmsteer import __version__
from lm_eval_ssmsteer.fastscan import use_fast_scan
from lm_eval_ssmsteer.hooks import steer
from lm_eval_ssmsteer.loading import NATIVE_TOKENIZER, prepare_pretrained
from lm_eval_ssmsteer.sites import describe_config, describe_model, resolve
from lm_eval_ssmsteer.spec import SpecError, SteeringSpec, load_spec

_SHORTHAND = ("steer_layer", "steer_site", "steer_channels", "steer_scale", "steer_positions")
# lm-eval passes these to every backend, whatever its signature
_ALWAYS_PASSED = ("batch_size", "max_batch_size", "device")


def spec_from_model_args(steer_arg: Any = None, **shorthand: Any) -> SteeringSpec | None:
    """The spec named by ``steer=`` or spelled inline with the ``steer_*`` shorthand (not both)."""
    given = {k: v for k, v in shorthand.items() if v is not None}
    if steer_arg is not None and given:
        raise SpecError(
            f"give either steer= or the steer_* shorthand, not both (got steer and {sorted(given)})"
        )
    if steer_arg is not None:
        if isinstance(steer_arg, (dict, SteeringSpec)):
            return load_spec(steer_arg)
        return load_spec(str(steer_arg))
    if not given:
        return None
    missing = [k for k in ("steer_layer", "steer_site", "steer_scale") if k not in given]
    if missing:
        raise SpecError(f"the steer_* shorthand needs {missing} as well (got {sorted(given)})")
    return SteeringSpec.single(
        layer=_literal(given["steer_layer"], "steer_layer"),
        site=given["steer_site"],
        channels=_literal(given.get("steer_channels", "all"), "steer_channels"),
        scale=_literal(given["steer_scale"], "steer_scale"),
        positions=given.get("steer_positions", "all"),
    )


def _literal(value: Any, name: str) -> Any:
    """model_args strings like "[4,38]" or "4;38" (lm-eval's Python API splits on bare commas)."""
    if not isinstance(value, str) or value == "all":
        return value
    text = value.strip()
    if ";" in text:
        text = "[" + text.replace(";", ",") + "]"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise SpecError(f"{name}={value!r} is not a number, a list of numbers, or 'all'") from None


@register_model("mamba-steered")
class MambaSteeredLM(HFLM):
    """HFLM for Mamba, Mamba-2 and FalconMamba models with optional activation steering."""

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
        # Everything about the spec that can be checked without the model fails here, before loading.
        self.steering_spec = spec_from_model_args(
            steer,
            steer_layer=steer_layer,
            steer_site=steer_site,
            steer_channels=steer_channels,
            steer_scale=steer_scale,
            steer_positions=steer_positions,
        )
        self._requested_model = pretrained if isinstance(pretrained, str) else type(pretrained).__name__
        if isinstance(pretrained, str):
            pretrained, native = prepare_pretrained(pretrained)
            if native and kwargs.get("tokenizer") is None:
                kwargs["tokenizer"] = NATIVE_TOKENIZER
        else:
            describe_model(pretrained)
        super().__init__(pretrained=pretrained, **kwargs)
        self.arch = describe_model(self.model)
        if self.steering_spec is not None:
            resolve(self.steering_spec, self.arch)  # shape checks: layer/channel ranges, fingerprint
        self.fast_scan = self._check_fast_scan(fast_scan)

    def _check_fast_scan(self, value: bool | str) -> bool:
        """`fast_scan=True`: Mamba-1/FalconMamba on CPU run lm_eval_ssmsteer.fastscan instead of the loop."""
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise SpecError(f"fast_scan={value!r}: allowed values are true or false")
            value = value.lower() in ("true", "1")
        if not value:
            return False
        if self.arch.architecture not in ("mamba", "falcon_mamba"):
            raise SpecError(
                f"fast_scan=True applies to model types mamba and falcon_mamba; this model is "
                f"{self.arch.architecture}"
            )
        if self.model.device.type != "cpu":
            raise SpecError(
                f"fast_scan=True is for the CPU torch path; on {self.model.device.type} it would replace "
                "the mamba-ssm kernels"
            )
        return True

    def _scan(self):
        return use_fast_scan() if self.fast_scan else nullcontext()

    def _get_config(self, pretrained: str, **kwargs: Any) -> None:
        super()._get_config(pretrained, **kwargs)
        describe_config(self._config)  # a non-Mamba model fails before its weights are loaded

    def _model_call(self, inps, attn_mask=None, labels=None):
        with self._scan(), steer(self.model, self.steering_spec):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        with self._scan(), steer(self.model, self.steering_spec):
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
