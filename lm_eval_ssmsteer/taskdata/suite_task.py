"""The lm-eval Task class of the suite's YAMLs (``class: !function utils.SuiteTask``): a ConfigurableTask
whose requests carry each document's own generation budget and which asks every query of a
several-query document (MQAR) as a request of its own. Scoring lives in ``harness``.
"""

from __future__ import annotations

from copy import deepcopy

from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask


class SuiteTask(ConfigurableTask):
    """Generation requests get ``max_gen_toks`` from the document (derived from its answer) unless
    ``--gen_kwargs max_gen_toks=N`` sets it; a document with ``queries`` becomes one request per query
    (per query and choice for multiple choice), scored together by the task's ``process_results``."""

    def __init__(self, config: dict | None = None, **kwargs) -> None:
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"}, **kwargs)

    def _generation_kwargs(self, doc: dict) -> dict:
        kwargs = deepcopy(self.config.generation_kwargs)
        kwargs.setdefault("max_gen_toks", doc["max_gen_toks"])
        return kwargs

    def _query_contexts(self, doc: dict, ctx: str) -> list[str]:
        """Each query's prompt, after whatever lm-eval put before the document (description, few-shot)."""
        if not isinstance(ctx, str) or not ctx.endswith(doc["context"]):
            raise ValueError(
                f"{self.config.task}: a document of several queries needs a plain text prompt ending in the "
                f"document (no chat template)"
            )
        prefix = ctx[: len(ctx) - len(doc["context"])]
        return [prefix + q["context"] for q in doc["queries"]]

    def construct_requests(self, doc: dict, ctx, **kwargs) -> list[Instance] | Instance:
        if not doc.get("queries") and self.OUTPUT_TYPE != "generate_until":
            return super().construct_requests(doc, ctx, **kwargs)
        kwargs.pop("apply_chat_template", None)
        kwargs.pop("chat_template", None)
        delimiter = self.config.target_delimiter
        if doc.get("queries"):
            contexts = self._query_contexts(doc, ctx)
            if self.OUTPUT_TYPE == "generate_until":
                arguments = [(c, self._generation_kwargs(doc)) for c in contexts]
                request_type = "generate_until"
            elif self.OUTPUT_TYPE == "multiple_choice":
                arguments = [
                    (c, f"{delimiter}{choice}")
                    for c, q in zip(contexts, doc["queries"], strict=True)
                    for choice in q["choices"]
                ]
                request_type = "loglikelihood"
            else:  # loglikelihood: the query's answer, scored by whether greedy decoding gives it
                arguments = [
                    (c, f"{delimiter}{q['completion']}")
                    for c, q in zip(contexts, doc["queries"], strict=True)
                ]
                request_type = "loglikelihood"
            return [
                Instance(request_type=request_type, doc=doc, arguments=a, idx=i, **kwargs)
                for i, a in enumerate(arguments)
            ]
        return Instance(
            request_type="generate_until",
            doc=doc,
            arguments=(ctx, self._generation_kwargs(doc)),
            idx=0,
            **kwargs,
        )
