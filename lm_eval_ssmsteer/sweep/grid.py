"""The cells of a sweep: one steering spec each (or none, for the unsteered reference), from a grid of
layers × sites × scales or from a list of spec files and presets; checked against the model's shape before
anything is evaluated, and shared among processes.

Pure data: no torch and no lm-eval import.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from lm_eval_ssmsteer.mamba.arch import ArchInfo
from lm_eval_ssmsteer.spec import SpecError, SteeringSpec, load_spec
from lm_eval_ssmsteer.steering.plan import resolve

UNSTEERED = "unsteered"


@dataclass(frozen=True)
class Cell:
    """One evaluation of a sweep: ``spec`` on every task; None is the model unsteered."""

    name: str
    spec: SteeringSpec | None

    @property
    def sha256(self) -> str | None:
        return None if self.spec is None else self.spec.sha256


def grid_cells(
    layers: Sequence[int],
    sites: Sequence[str],
    scales: Sequence[float],
    channels: Sequence[int] | str = "all",
    positions: str = "all",
) -> list[Cell]:
    """One cell per (layer, site, scale), in that order; the spec fields are checked as any spec's are."""
    for option, values in (("--layers", layers), ("--sites", sites), ("--scales", scales)):
        if not values:
            raise SpecError(f"{option} is empty: the grid needs at least one value on each axis")
    cells = []
    for layer, site, scale in product(layers, sites, scales):
        spec = SteeringSpec.single(
            layer=layer,
            site=site,
            channels=channels if isinstance(channels, str) else list(channels),
            scale=scale,
            positions=positions,
            provenance={"sweep": {"layer": layer, "site": site, "scale": scale}},
        )
        label = f"L{layer}_{site}_x{scale:g}"
        if not isinstance(channels, str):
            label += f"_{len(channels)}ch"
        if positions != "all":
            label += f"_{positions}"
        cells.append(Cell(f"{label}_{spec.sha256[:8]}", spec))
    return cells


def spec_cells(refs: Sequence[str]) -> list[Cell]:
    """One cell per spec file or preset, named after it."""
    cells = []
    for ref in refs:
        spec = load_spec(ref)
        stem = Path(ref).stem if Path(ref).suffix == ".json" else ref
        cells.append(Cell(f"{_safe(stem)}_{spec.sha256[:8]}", spec))
    return cells


def sweep_cells(cells: Sequence[Cell], unsteered: bool) -> list[Cell]:
    """The cells of a sweep: the unsteered reference first (when asked for), then every spec once;
    SpecError for an empty sweep or a spec given twice."""
    if not cells:
        raise SpecError(
            "nothing to sweep: give a grid (--layers, --sites and --scales) or spec files (--specs)"
        )
    seen: dict[str, str] = {}
    for cell in cells:
        if cell.sha256 in seen:
            raise SpecError(
                f"cells {seen[cell.sha256]} and {cell.name} are the same spec (sha256 {cell.sha256[:12]}); "
                "give each spec once"
            )
        seen[cell.sha256] = cell.name
    return [Cell(UNSTEERED, None), *cells] if unsteered else list(cells)


def check_cells(cells: Sequence[Cell], arch: ArchInfo) -> None:
    """Every spec against the model's shape (layers, channels, fingerprint): SpecError naming the cell."""
    for cell in cells:
        if cell.spec is None:
            continue
        try:
            resolve(cell.spec, arch)
        except SpecError as exc:
            raise SpecError(f"cell {cell.name}: {exc}") from None


def cells_for_process(cells: Sequence[Cell], rank: int, world_size: int) -> list[Cell]:
    """The cells process ``rank`` of ``world_size`` evaluates: every world_size-th cell from its rank on,
    so that every cell has exactly one process and the shares differ by at most one cell."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not a process of a world of {world_size}")
    return list(cells[rank::world_size])


def parse_list(text: str, option: str, kind: type) -> list[Any]:
    """``18,20,22`` as a list of ``kind``; SpecError naming the option for an empty list or a bad item."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise SpecError(f"{option}={text!r}: expected a comma-separated list, e.g. {option} 18,20,22")
    try:
        return [kind(item) for item in items]
    except ValueError:
        raise SpecError(f"{option}={text!r}: every item must be a {kind.__name__}") from None


def read_channels(value: str) -> list[int] | str:
    """``all``, or the channel indices in a file: a JSON list, a spec (its first intervention's channels),
    or integers separated by commas or white space."""
    if value == "all":
        return "all"
    path = Path(value)
    if not path.is_file():
        raise SpecError(f"--channels {value!r}: neither 'all' nor an existing file")
    text = path.read_text()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = [item for item in text.replace(",", " ").split()]
    if isinstance(doc, dict):
        doc = SteeringSpec.from_dict(doc, source=str(path)).interventions[0].channels
        if doc == "all":
            return "all"
    try:
        channels = [int(c) for c in doc]
    except (TypeError, ValueError):
        raise SpecError(
            f"--channels {value}: expected channel indices (integers), got {text[:60]!r}"
        ) from None
    if not channels:
        raise SpecError(f"--channels {value}: the file lists no channels")
    return channels


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
