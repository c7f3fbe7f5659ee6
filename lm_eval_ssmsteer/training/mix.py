"""The training data: the suite's TRAIN split, mixed over tasks, encoded and cut into micro-batches.

Every document is drawn from ``taskdata.generate(task, "train", ...)`` with knobs drawn uniformly from
TRAIN_RANGES, so the default test settings are in distribution and longer lengths are not. A document is
one sequence, ``context + " " + answer + "\\n"`` of its last query, with the loss on the answers only: a
several-query document (MQAR) carries a target at every query whose answer the sequence spells out at
that place, and where it does not (Zoology's MQAR puts a random token there) the query's first answer
token is still its target, as in Zoology's training.

A data stream is a sequence of epochs; epoch ``e`` is generated from the seed, the stream's name and
``e`` alone, so the position (stream, epoch, index) fixes the data of any later step (exact resumption).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache

from lm_eval_ssmsteer.taskdata import TASKS, generate, prompts
from lm_eval_ssmsteer.taskdata import tokenizer as project_tokenizer
from lm_eval_ssmsteer.training.auxiliary import AUX_RANGES, AUX_WEIGHTS, deferred_recall

TRAIN_MAX_LENGTH = 768
# knob -> (low, high), drawn uniformly per chunk of documents
TRAIN_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "ssm_copy": {"length": (4, 32)},
    "ssm_selective_copy": {"length": (8, 64), "num_tokens": (2, 8)},
    "ssm_mamba_selective_copy": {"length": (16, 256), "num_tokens": (2, 16)},
    "ssm_phonebook": {"num_entries": (3, 24)},
    "ssm_mqar": {"num_pairs": (2, 24), "num_queries": (1, 4)},
    "ssm_zoology_mqar": {"num_pairs": (2, 16), "length": (16, 128)},
    "ssm_kv_retrieval": {"num_pairs": (1, 16)},
    "ssm_induction": {"length": (4, 64)},
    # lower ends: the least length (prompt and generation budget) of the worst of 1,000 train documents
    # with the largest knobs, plus some haystack
    "ssm_passkey": {"length": (240, TRAIN_MAX_LENGTH)},
    "ssm_niah_single": {"length": (260, TRAIN_MAX_LENGTH)},
    "ssm_niah_multikey": {"length": (460, TRAIN_MAX_LENGTH), "num_needles": (1, 4)},
    "ssm_niah_multivalue": {"length": (500, TRAIN_MAX_LENGTH), "num_values": (1, 4)},
    "ssm_niah_multiquery": {"length": (500, TRAIN_MAX_LENGTH), "num_needles": (2, 4), "num_queries": (1, 2)},
    "ssm_variable_tracking": {"length": (480, TRAIN_MAX_LENGTH), "num_hops": (1, 4)},
    "ssm_ruler_niah_single": {"length": (440, TRAIN_MAX_LENGTH)},
    "ssm_ruler_niah_multikey": {"length": (480, TRAIN_MAX_LENGTH)},
}
# sampling weight of each task in the mix, per document (harder tasks more often)
TASK_WEIGHTS = {
    "ssm_copy": 1.0,
    "ssm_selective_copy": 1.0,
    "ssm_mamba_selective_copy": 1.0,
    "ssm_phonebook": 1.5,
    "ssm_mqar": 1.5,
    "ssm_zoology_mqar": 1.5,
    "ssm_kv_retrieval": 1.5,
    "ssm_induction": 1.0,
    "ssm_passkey": 1.0,
    "ssm_niah_single": 1.0,
    "ssm_niah_multikey": 1.5,
    "ssm_niah_multivalue": 1.5,
    "ssm_niah_multiquery": 1.5,
    "ssm_variable_tracking": 1.5,
    "ssm_ruler_niah_single": 1.0,
    "ssm_ruler_niah_multikey": 1.5,
}
CHUNK = 16  # documents per (task, knob draw)
CURRICULUM_SHARE = 0.5  # the easy stream draws knobs from the lower half of each range


def check_ranges(ranges: dict | None) -> dict[str, dict[str, tuple[int, int]]]:
    """Overrides of TRAIN_RANGES (or of a training-only task's AUX_RANGES), {task: {knob: (low, high)}},
    checked: a trainable task, one of its knobs, whole numbers 1 <= low <= high. Lists (as JSON gives them)
    become tuples."""
    known = {**TRAIN_RANGES, **AUX_RANGES}
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for task, knobs in (ranges or {}).items():
        if task not in known:
            raise ValueError(f"ranges: task {task!r} is not trainable; allowed: {', '.join(known)}")
        for knob, bounds in knobs.items():
            if knob not in known[task]:
                allowed = ", ".join(known[task])
                raise ValueError(f"ranges: {task} has no knob {knob!r}; its knobs: {allowed}")
            low, high = bounds
            if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
                raise ValueError(f"ranges: {task}.{knob}={low}:{high}; whole numbers with 1 <= low <= high")
            out.setdefault(task, {})[knob] = (low, high)
    return out


def train_ranges(
    max_length: int = TRAIN_MAX_LENGTH, easy: bool = False, overrides: dict | None = None
) -> dict[str, dict[str, tuple[int, int]]]:
    """TRAIN_RANGES with `overrides` (``check_ranges``) in place, long-context prompts of at most
    `max_length` characters (a long-context task whose shortest prompt is longer is left out); `easy`: the
    lower half of every range."""
    ranges = {}
    changed = check_ranges(overrides)
    for task, knobs in TRAIN_RANGES.items():
        knobs = {**knobs, **changed.get(task, {})}
        if "length" in knobs and TASKS[task].long_context:
            low, high = knobs["length"]
            if low > max_length:
                continue
            # a long-context task trains up to max_length, or less where an override asks for less
            high = min(high, max_length) if "length" in changed.get(task, {}) else max_length
            knobs = {**knobs, "length": (low, high)}
        ranges[task] = _lower_share(knobs) if easy else knobs
    return ranges


def _lower_share(knobs: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """The easy stream's ranges: the lower CURRICULUM_SHARE of each."""
    return {k: (lo, lo + math.ceil((hi - lo) * CURRICULUM_SHARE)) for k, (lo, hi) in knobs.items()}


def aux_ranges(task: str, easy: bool = False, overrides: dict | None = None) -> dict[str, tuple[int, int]]:
    """A training-only task's knob ranges (AUX_RANGES) with ``overrides`` in place; ``easy``: lower halves."""
    knobs = {**AUX_RANGES[task], **check_ranges(overrides).get(task, {})}
    return _lower_share(knobs) if easy else knobs


def mix_ranges(
    max_length: int = TRAIN_MAX_LENGTH, tasks: Sequence[str] | None = None, overrides: dict | None = None
) -> dict[str, dict[str, tuple[int, int]]]:
    """What a run's training.json records: every suite task's ranges (``train_ranges``), and those of the
    training-only tasks among ``tasks`` (``aux_ranges``), ``overrides`` in place."""
    ranges = train_ranges(max_length, overrides=overrides)
    ranges.update({t: aux_ranges(t, overrides=overrides) for t in tasks or () if t in AUX_RANGES})
    return ranges


@dataclass(frozen=True)
class Example:
    """One training sequence: token ids, the target of each position (-100: none), and its task."""

    ids: tuple[int, ...]
    targets: tuple[int, ...]
    task: str


def draw_knobs(task: str, rng: random.Random, ranges: dict) -> dict[str, int]:
    knobs = {k: rng.randint(lo, hi) for k, (lo, hi) in ranges[task].items()}
    if task == "ssm_niah_multiquery":
        knobs["num_queries"] = min(knobs["num_queries"], knobs["num_needles"])
    if task == "ssm_mqar":
        knobs["num_queries"] = min(knobs["num_queries"], knobs["num_pairs"])
    if task == "ssm_selective_copy":
        knobs["num_tokens"] = min(knobs["num_tokens"], knobs["length"])
    if task == "ssm_mamba_selective_copy":
        knobs["num_tokens"] = min(knobs["num_tokens"], knobs["length"])
    if task == "ssm_zoology_mqar":  # even, with as many query slots as pairs
        knobs["length"] = max(knobs["length"], 4 * knobs["num_pairs"]) // 2 * 2
    return knobs


def sequences(doc_prompts: Sequence[tuple[str, str]]) -> list[tuple[str, list[tuple[int, str]]]]:
    """Texts to train on for one document, each with its (offset, answer text) targets: the last query's
    text carries every earlier query whose context it extends; a query it does not extend gets its own."""
    context, answer = doc_prompts[-1]
    text = f"{context} {answer}\n"
    spans: list[tuple[int, str]] = []
    separate = []
    for c, a in doc_prompts[:-1]:
        if text.startswith(c):
            span = f" {a}"
            # the answer's characters are targets while the text spells them out; the first is always
            # one (it is predicted from the context alone)
            n = 1
            while n < len(span) and text[len(c) + n - 1] == span[n - 1]:
                n += 1
            spans.append((len(c), span[:n]))
        else:
            separate.append((f"{c} {a}\n", [(len(c), f" {a}\n")]))
    spans.append((len(context), f" {answer}\n"))
    return [*separate, (text, spans)]


def _chunk(
    job: tuple[str, int, int, str, int, bool, dict | None],
) -> list[tuple[str, str, list[tuple[int, str]]]]:
    task, chunk, seed, stream, max_length, easy, overrides = job
    aux = task in AUX_RANGES
    ranges = {task: aux_ranges(task, easy, overrides)} if aux else train_ranges(max_length, easy, overrides)
    rng = random.Random(f"train-mix/{task}/{seed}/{stream}/{chunk}")
    knobs = draw_knobs(task, rng, ranges)
    doc_seed = int.from_bytes(random.Random(f"docs/{task}/{seed}/{stream}/{chunk}").randbytes(6), "big")
    if aux:
        docs = deferred_recall(CHUNK, doc_seed, **knobs)
    else:
        docs = [prompts(d) for d in generate(task, "train", CHUNK, seed=doc_seed, **knobs)]
    return [(task, text, spans) for d in docs for text, spans in sequences(d)]


@dataclass(frozen=True)
class MixSpec:
    """What a data stream holds (stored in checkpoints: a resumed run regenerates the same data)."""

    tasks: tuple[str, ...]
    weights: dict[str, float]
    docs_per_epoch: int
    max_length: int = TRAIN_MAX_LENGTH
    seed: int = 0
    ranges: dict | None = None  # overrides of TRAIN_RANGES (check_ranges)


BALANCES = ("docs", "tokens")


def mean_tokens(
    task: str, max_length: int = TRAIN_MAX_LENGTH, seed: int = 0, chunks: int = 4, ranges: dict | None = None
) -> float:
    """Mean length in tokens of `task`'s training sequences (a few seeded chunks of the full ranges)."""
    texts = [t for c in range(chunks) for t in _chunk((task, c, seed, "balance", max_length, False, ranges))]
    return sum(len(text) for _, text, _ in texts) / len(texts)


def default_mix(
    tasks: Sequence[str] | None = None,
    weights: dict[str, float] | None = None,
    docs_per_epoch: int = 100_000,
    max_length: int = TRAIN_MAX_LENGTH,
    seed: int = 0,
    balance: str = "docs",
    ranges: dict | None = None,
) -> MixSpec:
    """The mix of `tasks` (every suite task by default). `weights` override TASK_WEIGHTS; they are shares of
    documents (`balance="docs"`) or of tokens (`balance="tokens"`: a task of short sequences gets more of
    them). A training-only task (AUX_RANGES) is in the mix only when `tasks` or `weights` names it."""
    if balance not in BALANCES:
        raise ValueError(f"balance={balance!r}: one of {', '.join(BALANCES)}")
    available = train_ranges(max_length, overrides=ranges)
    chosen = tuple(tasks) if tasks else tuple(available)
    chosen += tuple(t for t in (weights or {}) if t in AUX_RANGES and t not in chosen)
    bad = [t for t in chosen if t not in TRAIN_RANGES and t not in AUX_RANGES]
    if bad:
        allowed = ", ".join([*TRAIN_RANGES, *AUX_RANGES])
        raise ValueError(f"tasks: {', '.join(bad)} not trainable; allowed: {allowed}")
    short = [t for t in chosen if t not in available and t not in AUX_RANGES]
    if short:
        raise ValueError(
            f"tasks: {', '.join(short)} need prompts longer than max_length={max_length} characters"
        )
    defaults = {**TASK_WEIGHTS, **AUX_WEIGHTS}
    w = {t: defaults[t] for t in chosen}
    for t, v in (weights or {}).items():
        if t not in w:
            raise ValueError(f"weights: task {t!r} is not in the mix; tasks: {', '.join(chosen)}")
        if not v >= 0:
            raise ValueError(f"weights: {t}={v}; a weight is a number >= 0")
        w[t] = float(v)
    if not any(w.values()):
        raise ValueError("weights: all zero; at least one task needs a positive weight")
    if balance == "tokens":
        lengths = {t: mean_tokens(t, max_length, seed, ranges=ranges) for t in chosen}
        mean = sum(lengths.values()) / len(lengths)
        w = {t: round(v * mean / lengths[t], 4) for t, v in w.items()}
    return MixSpec(chosen, w, docs_per_epoch, max_length, seed, check_ranges(ranges) or None)


def epoch_texts(
    mix: MixSpec, stream: str, epoch: int, workers: int = 1
) -> list[tuple[str, str, list[tuple[int, str]]]]:
    """About `mix.docs_per_epoch` documents of epoch `epoch` of `stream` ("easy" or "full"), mixed by the
    weights, as (task, text, answer spans), in a seeded order."""
    easy = stream == "easy"
    total = sum(mix.weights.values())
    name = f"{stream}{epoch}"
    jobs = [
        (t, c, mix.seed, name, mix.max_length, easy, mix.ranges)
        for t in mix.tasks
        for c in range(math.ceil(mix.docs_per_epoch * mix.weights[t] / total / CHUNK))
    ]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            chunks = list(pool.map(_chunk, jobs, chunksize=8))
    else:
        chunks = [_chunk(j) for j in jobs]
    texts = [item for chunk in chunks for item in chunk]
    random.Random(f"order/{mix.seed}/{name}").shuffle(texts)
    return texts


def encode(texts: Sequence[tuple[str, str, list[tuple[int, str]]]]) -> list[Example]:
    """Token ids (one per character: the project tokenizer) and targets of each text."""
    tok = project_tokenizer.build_tokenizer()
    encoded = tok.encode_batch([t for _, t, _ in texts], add_special_tokens=False)
    out = []
    for e, (task, text, spans) in zip(encoded, texts, strict=True):
        ids = e.ids
        if len(ids) != len(text):
            raise AssertionError("the project tokenizer gives one token per character")
        targets = [-100] * len(ids)
        span_ids = tok.encode_batch([s for _, s in spans], add_special_tokens=False)
        for (offset, _), s in zip(spans, span_ids, strict=True):
            for k, token in enumerate(s.ids):
                targets[offset - 1 + k] = token
        out.append(Example(tuple(ids), tuple(targets), task))
    return out


def micro_batches(examples: Sequence[Example], tokens: int, seed: str) -> list[list[int]]:
    """Index batches of similar lengths (little padding), each of at most `tokens` padded tokens (or one
    example), in a seeded random order: consecutive micro-batches come from different lengths and tasks."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].ids), i))
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending lengths: example i is the longest of the batch it joins
        if current and len(examples[i].ids) * (len(current) + 1) > tokens:
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    random.Random(f"batches/{seed}").shuffle(out)
    return out


class Stream:
    """Micro-batches of a data stream from a position on; `position` is where the next one comes from."""

    def __init__(self, mix: MixSpec, name: str, tokens: int, workers: int, epoch: int = 0, index: int = 0):
        self.mix, self.name, self.tokens, self.workers = mix, name, tokens, workers
        self.epoch, self.index = epoch, index
        self._loaded: int | None = None
        self.examples: list[Example] = []
        self.plan: list[list[int]] = []

    @property
    def position(self) -> dict:
        return {"stream": self.name, "epoch": self.epoch, "index": self.index}

    def _load(self) -> None:
        if self._loaded != self.epoch:
            texts = epoch_texts(self.mix, self.name, self.epoch, self.workers)
            self.examples = encode(texts)
            self.plan = micro_batches(self.examples, self.tokens, f"{self.mix.seed}/{self.name}{self.epoch}")
            self._loaded = self.epoch

    def __iter__(self) -> Iterator[list[Example]]:
        while True:
            self._load()
            if self.index >= len(self.plan):
                self.epoch, self.index = self.epoch + 1, 0
                continue
            batch = [self.examples[i] for i in self.plan[self.index]]
            self.index += 1
            yield batch


@cache
def _word_start_tables(device) -> tuple[int, object]:
    """The project tokenizer's space id, and a bool tensor on ``device``: per token id, a letter or digit
    (built once a device: ``word_start_weights`` runs on every micro-batch)."""
    import torch

    vocab = project_tokenizer.build_tokenizer().get_vocab()
    alnum = [False] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        alnum[i] = len(token) == 1 and token.isalnum()
    return vocab[" "], torch.tensor(alnum, device=device)


def word_start_weights(ids, targets, weight: float):
    """(b, l) float loss weights for ``collate``'s (ids, targets): ``weight`` where the target is a letter
    or digit predicted right after a space (an answer word's first character: in "... are 7133084,
    1111101." the 7 and the second 1, the characters that decide which value is written; the rest of a
    value follows from its first), 1 at every other target, 0 where there is none (-100)."""
    space, alnum = _word_start_tables(targets.device)
    has = targets != -100
    starts = has & (ids == space) & alnum[targets.clamp(min=0)]
    return has.float() + (weight - 1.0) * starts.float()


def collate(batch: Sequence[Example], device):
    """(ids, targets) tensors, right-padded with the pad token (0) and target -100."""
    import torch

    width = max(len(e.ids) for e in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    targets = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        targets[row, : len(e.targets)] = torch.tensor(e.targets)
    return ids.to(device), targets.to(device)
