"""Reading lm-eval results files (any backend, any task) into runs: one model, one steering spec, its tasks.

A run is what one ``results_<date>.json`` holds. The same reader takes the baseline files written by
:func:`lm_eval_ssmsteer.report.regress.write_baseline`, which store runs in this normalised form.
Nothing here imports lm_eval: reports and regression checks work on results copied off another machine.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import Any

from lm_eval_ssmsteer.report.documents import DocumentScores, read_samples, samples_beside

BASELINE_FORMAT = "ssmsteer-baseline/1"
RESULTS_GLOB = "results_*.json"
# lm-eval copies every model argument into each task's metadata, and records where the YAML was read
# from; neither says anything about the task, so neither may make two runs' task configs differ.
_CONFIG_SOURCE_KEY = "config_source"
# model arguments that say where or how fast a model runs, where its tokenizer lies, or which spec steers
# it (the spec has its own column); any other argument (dtype, revision, ...) makes a different model
_NOT_VARIANT_ARGS = {
    "pretrained",
    "tokenizer",
    "device",
    "device_map",
    "batch_size",
    "max_batch_size",
    "parallelize",
    "trust_remote_code",
    "fast_scan",  # how the scan runs on CPU, not what it computes (equal to 1e-5, tests/test_backend.py)
    "steering_spec",
    "steering_spec_sha256",
    "steer",
    "steer_layer",
    "steer_site",
    "steer_channels",
    "steer_scale",
    "steer_positions",
}
# RULER-style tasks report -1 for a length they did not measure.
NOT_MEASURED = -1


class ResultsError(ValueError):
    """A results file that cannot be read as lm-eval results; the message names the file and the problem."""

    def __init__(self, source: Path | str, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source = str(source)
        self.problem = problem


@dataclass(frozen=True)
class Score:
    value: float
    stderr: float | None  # None where lm-eval reported "N/A" (e.g. custom aggregations)
    n: int | None = None  # documents behind the score (the task's n_samples); None when unknown


@dataclass(frozen=True)
class MetricKey:
    """One score of a task: lm-eval's ``"<metric>,<filter>"``. RULER-style metrics are named by length."""

    metric: str
    filter: str

    @property
    def length(self) -> int | None:
        return int(self.metric) if self.metric.isdigit() else None

    def __str__(self) -> str:
        return f"{self.metric},{self.filter}"


@dataclass
class TaskResult:
    name: str
    source: Path
    version: Any
    n_shot: Any
    # documents evaluated: lm-eval's n-samples "effective" (for metrics named by length, the most documents
    # any one length had), None when the file does not say; "original" is the task's full document count
    n_samples: int | None
    config: dict  # the task config, normalised (see normalise_task_config)
    config_sha256: str
    task_hash: str | None  # lm-eval's hash of documents, prompts and targets (only with --log_samples)
    higher_is_better: dict[str, bool]
    scores: dict[MetricKey, Score]
    n_original: int | None = None
    limit: float | None = None  # lm-eval's --limit (a count, or a fraction of the documents when < 1)
    samples_file: Path | None = None  # lm-eval's per-document samples beside the results (--log_samples)
    frozen_documents: DocumentScores | None = None  # per-document scores a baseline holds

    def documents(self) -> DocumentScores | None:
        """Per-document scores: frozen in a baseline, else read from lm-eval's samples file beside the
        results file; None for a run made without --log_samples."""
        if self.frozen_documents is not None:
            return self.frozen_documents
        if self.samples_file is None:
            return None
        try:
            return read_samples(self.samples_file)
        except ValueError as exc:
            raise ResultsError(self.samples_file, str(exc).removeprefix(f"{self.samples_file}: ")) from None

    @property
    def limited(self) -> bool:
        return self.limit is not None

    def is_higher_better(self, key: MetricKey) -> bool:
        return self.higher_is_better.get(key.metric, True)


@dataclass
class Run:
    source: Path
    backend: str
    model: str  # what the model was loaded from: `pretrained` as given, else lm-eval's model name
    steering_spec: Any  # the spec as recorded (dict, path or JSON text); None when unsteered
    steering_spec_sha256: str | None
    lm_eval_version: str | None
    date: float
    spec_ref: str | None = None  # how the user named the spec (``steer=`` file or preset), if by name
    variant: str = ""  # model arguments that change the model, e.g. "dtype=bfloat16"
    tasks: dict[str, TaskResult] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str | None]:
        """A run's identity. Local model folders count by folder name, so that a baseline made in one
        checkout matches the same model evaluated in another."""
        return (self.backend, self.model_label, self.steering_spec_sha256)

    @property
    def model_label(self) -> str:
        label = model_label(self.model)
        return f"{label} ({self.variant})" if self.variant else label

    @property
    def spec_label(self) -> str:
        return spec_label(self.steering_spec, self.steering_spec_sha256)


def model_label(model: str) -> str:
    """A local folder shows as its last component; hub ids (``org/name``) stay whole."""
    if model.startswith(("/", "./", "../", "~")) or "\\" in model:
        return PurePath(model.rstrip("/\\")).name or model
    return model


def spec_label(spec: Any, sha256: str | None) -> str:
    """A row label: "unsteered", or what the spec does (``L20 mixer_out×5.0``) and its hash prefix."""
    if sha256 is None:
        return "unsteered"
    short = sha256[:8]
    if not isinstance(spec, dict):
        return f"spec {short}"
    interventions = spec.get("interventions")
    if (
        isinstance(interventions, list)
        and 0 < len(interventions) <= 2
        and all(isinstance(iv, dict) for iv in interventions)
    ):
        parts = [f"{_layers(iv.get('layer'))} {iv.get('site')}×{iv.get('scale')}" for iv in interventions]
        return f"{'; '.join(parts)} ({short})"
    if isinstance(interventions, list):
        return f"{len(interventions)} interventions ({short})"
    return f"spec {short}"


def _layers(layer: Any) -> str:
    return "all layers" if layer == "all" else f"L{layer}"


def canonical_sha256(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def find_results_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files are taken as given; folders are searched recursively for ``results_*.json``."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            hits = sorted(path.rglob(RESULTS_GLOB))
            if not hits:
                raise ResultsError(path, f"folder holds no {RESULTS_GLOB} files (searched recursively)")
            found.extend(hits)
        elif path.is_file():
            found.append(path)
        else:
            raise ResultsError(path, "no such file or folder")
    return list(dict.fromkeys(p.resolve() for p in found))


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    runs: list[Run] = []
    for path in find_results_files(paths):
        runs.extend(load_file(path))
    return runs


def load_file(path: Path) -> list[Run]:
    if path.name.startswith("samples_") or path.suffix == ".jsonl":
        raise ResultsError(
            path, "is an lm-eval samples file; pass the results_*.json beside it (or the folder)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(path, f"cannot be read: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise ResultsError(path, f"is not valid JSON ({where}: {exc.msg})") from exc
    if not isinstance(data, dict):
        raise ResultsError(path, f"expected a JSON object at the top level, found {type(data).__name__}")
    if data.get("format") == BASELINE_FORMAT:
        return _runs_from_baseline(path, data)
    return [run_from_results(path, data)]


def run_from_results(source: Path, data: dict) -> Run:
    """One lm-eval results dict (as written by ``--output_path``) as a run."""
    if "results" not in data:
        raise ResultsError(source, "not an lm-eval results file: it has no 'results' key")
    for key in ("configs", "config"):
        if key not in data:
            raise ResultsError(source, f"partial lm-eval results file: the '{key}' key is missing")
    results, configs, config = data["results"], data["configs"], data["config"]
    for key, value in (("results", results), ("configs", configs), ("config", config)):
        if not isinstance(value, dict):
            raise ResultsError(source, f"'{key}' should be an object, found {type(value).__name__}")

    model_args = _model_args(source, config.get("model_args"))
    backend = str(data.get("model_source") or config.get("model") or "unknown")
    model = str(model_args.get("pretrained") or data.get("model_name") or config.get("model") or "unknown")
    spec, spec_sha = _steering(config, model_args)
    spec_ref = model_args.get("steer")
    groups = set(data.get("group_subtasks") or {})
    task_hashes = data.get("task_hashes") or {}
    n_samples = data.get("n-samples") or {}
    limit = _limit(source, config.get("limit"))

    run = Run(
        source=source,
        backend=backend,
        model=model,
        steering_spec=spec,
        steering_spec_sha256=spec_sha,
        lm_eval_version=data.get("lm_eval_version"),
        date=float(data.get("date") or 0.0),
        spec_ref=spec_ref if isinstance(spec_ref, str) and not spec_ref.lstrip().startswith("{") else None,
        variant=",".join(f"{k}={v}" for k, v in sorted(model_args.items()) if k not in _NOT_VARIANT_ARGS),
    )
    for task, entry in results.items():
        if task not in configs:
            if task in groups:
                continue  # a group's aggregate: the leaderboard and regressions work on its tasks
            raise ResultsError(source, f"partial results: task '{task}' has scores but no entry in 'configs'")
        for key, table in (("versions", data.get("versions")), ("n-shot", data.get("n-shot"))):
            if not isinstance(table, dict) or task not in table:
                raise ResultsError(source, f"partial results: task '{task}' is missing from '{key}'")
        if not isinstance(entry, dict):
            raise ResultsError(source, f"results for task '{task}' should be an object")
        task_config = normalise_task_config(configs[task], model_args)
        counts = n_samples.get(task)
        run.tasks[task] = TaskResult(
            name=task,
            source=source,
            version=data["versions"][task],
            n_shot=data["n-shot"][task],
            n_samples=_count(counts, "effective"),
            config=task_config,
            config_sha256=canonical_sha256(task_config),
            task_hash=task_hashes.get(task) or None,
            higher_is_better=dict((data.get("higher_is_better") or {}).get(task) or {}),
            scores=_scores(source, task, entry, _count(counts, "effective")),
            n_original=_count(counts, "original"),
            limit=limit,
            samples_file=samples_beside(source, task),
        )
    if not run.tasks:
        raise ResultsError(source, "contains no task results")
    return run


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def normalise_task_config(task_config: Any, model_args: dict) -> dict:
    """The task config without what lm-eval adds from outside the task: model arguments copied into
    ``metadata``, the YAML's location, and the folders of local data files (a checkout elsewhere is the
    same task), and the memory addresses in reprs of functions (``custom_dataset``, ``process_results``)."""
    if not isinstance(task_config, dict):
        return {"config": task_config}
    config = json.loads(_ADDRESS.sub("", json.dumps(task_config, default=str)))
    metadata = config.get("metadata")
    if isinstance(metadata, dict):
        config["metadata"] = {
            k: v for k, v in metadata.items() if k != _CONFIG_SOURCE_KEY and k not in model_args
        }
    dataset_kwargs = config.get("dataset_kwargs")
    if isinstance(dataset_kwargs, dict) and "data_files" in dataset_kwargs:
        dataset_kwargs["data_files"] = _file_names(dataset_kwargs["data_files"])
    return config


def _file_names(data_files: Any) -> Any:
    if isinstance(data_files, str):
        return PurePath(data_files).name
    if isinstance(data_files, list):
        return [_file_names(f) for f in data_files]
    if isinstance(data_files, dict):
        return {k: _file_names(v) for k, v in data_files.items()}
    return data_files


def _model_args(source: Path, raw: Any) -> dict:
    """``config.model_args`` is a dict (CLI, dict given to simple_evaluate) or a ``k=v,k=v`` string."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        args = {}
        for item in filter(None, raw.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise ResultsError(source, f"config.model_args: '{item}' is not of the form key=value")
            args[key.strip()] = _model_arg_value(value.strip())
        return args
    found = type(raw).__name__
    raise ResultsError(source, f"config.model_args should be an object or a string, found {found}")


def _model_arg_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _steering(config: dict, model_args: dict) -> tuple[Any, str | None]:
    """The spec and its hash: from the backend's model info, else from the model arguments.

    A spec given as a JSON dict (or JSON text) without a recorded hash is hashed canonically here; a
    spec given only as a file path is identified by that path.
    """
    spec = config.get("steering_spec", model_args.get("steering_spec", model_args.get("steer")))
    sha = config.get("steering_spec_sha256") or model_args.get("steering_spec_sha256")
    if isinstance(spec, str):
        stripped = spec.strip()
        if stripped in ("", "null", "None"):
            spec = None
        elif stripped.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                spec = json.loads(stripped)
    if spec is None and not sha:
        return None, None
    return spec, str(sha) if sha else canonical_sha256(spec)


def _count(entry: Any, key: str) -> int | None:
    """One count of lm-eval's ``n-samples`` entry of a task ("effective" or "original"), None if absent."""
    value = entry.get(key) if isinstance(entry, dict) else None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _limit(source: Path, raw: Any) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not raw > 0:
        raise ResultsError(source, f"config.limit should be a positive number or null, found {raw!r}")
    return float(raw)


def format_limit(limit: float) -> str:
    """As the user gave it: ``--limit 4`` or ``--limit 0.1``."""
    return f"--limit {int(limit) if limit == int(limit) else limit}"


def _scores(source: Path, task: str, entry: dict, n: int | None) -> dict[MetricKey, Score]:
    values: dict[MetricKey, float] = {}
    stderrs: dict[MetricKey, float | None] = {}
    for raw_key, raw_value in entry.items():
        if "," not in raw_key:
            continue  # alias, name, sample_len, ...
        metric, _, filter_name = raw_key.partition(",")
        is_stderr = metric.endswith("_stderr")
        key = MetricKey(metric.removesuffix("_stderr"), filter_name)
        number = _number(source, task, raw_key, raw_value, allow_na=is_stderr)
        if is_stderr:
            stderrs[key] = None if number is None or math.isnan(number) else number
        elif not math.isnan(number):  # lm-eval writes NaN where a metric has no value: no score
            values[key] = number
    orphans = sorted(str(k) for k in stderrs if k not in values)
    if orphans:
        raise ResultsError(source, f"task '{task}': stderr without a score for {', '.join(orphans)}")
    if not values:
        raise ResultsError(source, f"task '{task}' has no scores")
    return {
        key: Score(value, stderrs.get(key), n)
        for key, value in values.items()
        if not (key.length is not None and value == NOT_MEASURED)
    }


def _number(source: Path, task: str, key: str, raw: Any, *, allow_na: bool) -> float | None:
    if raw in ("N/A", None) and allow_na:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or math.isinf(raw):
        raise ResultsError(source, f"task '{task}': '{key}' should be a number, found {raw!r}")
    return float(raw)


def _runs_from_baseline(source: Path, data: dict) -> list[Run]:
    entries = data.get("runs")
    if not isinstance(entries, list) or not entries:
        raise ResultsError(source, "baseline file has no 'runs'")
    runs = []
    for i, entry in enumerate(entries):
        try:
            run = Run(
                source=source,
                backend=entry["backend"],
                model=entry["model"],
                steering_spec=entry.get("steering_spec"),
                steering_spec_sha256=entry.get("steering_spec_sha256"),
                lm_eval_version=entry.get("lm_eval_version"),
                date=float(entry.get("date") or 0.0),
                spec_ref=entry.get("spec_ref"),
                variant=entry.get("variant", ""),
            )
            for name, task in entry["tasks"].items():
                run.tasks[name] = TaskResult(
                    name=name,
                    source=source,
                    version=task["version"],
                    n_shot=task["n_shot"],
                    n_samples=task.get("n_samples"),
                    config=task["config"],
                    config_sha256=canonical_sha256(task["config"]),
                    task_hash=task.get("task_hash"),
                    higher_is_better=task.get("higher_is_better", {}),
                    scores={
                        MetricKey(*k.split(",", 1)): Score(
                            float(s["value"]), s.get("stderr"), task.get("n_samples")
                        )
                        for k, s in task["scores"].items()
                    },
                    n_original=task.get("n_original"),
                    limit=_limit(source, task.get("limit")),
                    frozen_documents=(
                        DocumentScores.from_dict(task["documents"], f"{source} (run {i}, task {name})")
                        if task.get("documents")
                        else None
                    ),
                )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            problem = f"baseline run {i} is malformed ({type(exc).__name__}: {exc})"
            raise ResultsError(source, problem) from exc
        runs.append(run)
    return runs


def run_to_baseline(run: Run) -> dict:
    return {
        "backend": run.backend,
        "model": run.model,
        "steering_spec": run.steering_spec,
        "steering_spec_sha256": run.steering_spec_sha256,
        "spec_ref": run.spec_ref,
        "variant": run.variant,
        "lm_eval_version": run.lm_eval_version,
        "date": run.date,
        "source": run.source.name,
        "tasks": {
            name: {
                "version": task.version,
                "n_shot": task.n_shot,
                "n_samples": task.n_samples,
                "n_original": task.n_original,
                "limit": task.limit,
                "task_hash": task.task_hash,
                "higher_is_better": task.higher_is_better,
                "scores": {str(k): {"value": s.value, "stderr": s.stderr} for k, s in task.scores.items()},
                "config": task.config,
                **_frozen_documents(task),
            }
            for name, task in sorted(run.tasks.items())
        },
    }


def _frozen_documents(task: TaskResult) -> dict:
    """A baseline keeps per-document scores where the run logged samples, for paired checks."""
    documents = task.documents()
    return {} if documents is None else {"documents": documents.to_dict()}


def merge_runs(runs: list[Run]) -> tuple[list[Run], list[tuple[TaskResult, TaskResult]]]:
    """One run per (backend, model, spec), each task from the newest file that measured it (lm-eval's
    ``date``, then the file name), as when a folder holds reruns.

    Returns (merged runs, superseded), where superseded lists (older result left out, newer result kept).
    """
    merged: dict[tuple, Run] = {}
    superseded: list[tuple[TaskResult, TaskResult]] = []
    for run in sorted(runs, key=lambda r: (r.date, str(r.source))):
        target = merged.setdefault(run.key, replace(run, tasks={}))
        target.source, target.date = run.source, run.date
        for name, task in run.tasks.items():
            if name in target.tasks:
                superseded.append((target.tasks[name], task))
            target.tasks[name] = task
    return list(merged.values()), superseded
