"""Widen a trained model's SSM state, or deepen it, without changing what it computes (issue 18).

``widen_state(src, dst, factor)`` writes a copy of a Mamba-1 or Mamba-2 checkpoint whose ``state_size`` is
``factor`` times larger. The new state dimensions are written (their B rows are small random values) but
never read (their C rows are zero), so the widened model's logits equal the original's up to the order of
the sums; training then has the extra state to use, since the loss has a gradient in the new C rows.

- Mamba-1 (``MambaForCausalLM``): ``x_proj`` gives ``[dt (rank), B (N), C (N)]`` per token; the new B rows
  are drawn at the size of the old ones times ``b_scale``, the new C rows are 0, and ``A_log`` (channels × N)
  gains the S4D-real initialisation ``log(n + 1)`` for the new n.
- Mamba-2 (``Mamba2ForCausalLM``): ``in_proj`` gives ``[z, x, B (G·N), C (G·N), dt]`` and the depthwise
  ``conv1d`` runs over ``[x, B, C]``, then SiLU. The new B rows of ``in_proj`` and their conv channels copy
  the statistics of the old ones (scaled by ``b_scale``); the new C rows of ``in_proj`` and the new C
  channels' conv bias are 0, so the new C is SiLU(0) = 0 at every position, while their conv weights are
  kept random so that the gradient reaches ``in_proj``. ``A_log`` is one value a head and does not change.

``deepen_layers(src, dst, after)`` inserts, right after each layer index in ``after``, a copy of that layer
whose mixer output projection (``out_proj``, and its bias if any) is zero. A block adds its mixer's output to
the residual stream, so a new block adds exactly zero and the deepened model's logits equal the original's;
training then moves the new ``out_proj`` first (its gradient is the only non-zero one of the new block at
step 0) and the rest of the block after it. Both architectures, Mamba-1 and Mamba-2.

The state-dict names are those of transformers' Mamba and Mamba2 models (4.x and 5.x alike).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

SUPPORTED = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}


class WidenError(ValueError):
    """A checkpoint or a factor this tool cannot widen."""


def _rows_like(reference: torch.Tensor, count: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """``count`` random rows with the columns' spread of ``reference`` times ``scale``."""
    std = reference.float().std(dim=0, keepdim=True).clamp(min=1e-8)
    noise = torch.randn(count, reference.shape[1], generator=generator, dtype=torch.float32)
    return (noise * std * scale).to(reference.dtype)


def _widen_mamba1(sd: dict, layers: int, n: int, extra: int, scale: float, g: torch.Generator) -> None:
    for i in range(layers):
        p = f"backbone.layers.{i}.mixer."
        x_proj = sd[p + "x_proj.weight"]  # (rank + 2N, d_inner)
        rank = x_proj.shape[0] - 2 * n
        dt, b, c = x_proj[:rank], x_proj[rank : rank + n], x_proj[rank + n :]
        new_b = _rows_like(b, extra, scale, g)
        new_c = torch.zeros(extra, x_proj.shape[1], dtype=x_proj.dtype)
        sd[p + "x_proj.weight"] = torch.cat([dt, b, new_b, c, new_c]).contiguous()
        a_log = sd[p + "A_log"]  # (d_inner, N)
        s4d = torch.log(torch.arange(n + 1, n + extra + 1, dtype=torch.float32)).to(a_log.dtype)
        sd[p + "A_log"] = torch.cat([a_log, s4d.expand(a_log.shape[0], extra)], dim=1).contiguous()


def _widen_mamba2(
    sd: dict, layers: int, n: int, extra: int, groups: int, d_inner: int, scale: float, g: torch.Generator
) -> None:
    gn = groups * n

    def split_groups(t: torch.Tensor) -> list[torch.Tensor]:
        return list(t.reshape(groups, n, *t.shape[1:]))

    def join(old: list[torch.Tensor], new: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.cat([o, w]) for o, w in zip(old, new, strict=True)])

    for i in range(layers):
        p = f"backbone.layers.{i}.mixer."
        w = sd[p + "in_proj.weight"]  # (2·d_inner + 2·G·N + heads, hidden)
        z, x = w[:d_inner], w[d_inner : 2 * d_inner]
        b, c, dt = (
            w[2 * d_inner : 2 * d_inner + gn],
            w[2 * d_inner + gn : 2 * d_inner + 2 * gn],
            w[2 * d_inner + 2 * gn :],
        )
        new_b = [_rows_like(blk, extra, scale, g) for blk in split_groups(b)]
        new_c = [torch.zeros(extra, w.shape[1], dtype=w.dtype) for _ in range(groups)]
        sd[p + "in_proj.weight"] = torch.cat(
            [z, x, join(split_groups(b), new_b), join(split_groups(c), new_c), dt]
        )
        cw = sd[p + "conv1d.weight"]  # (d_inner + 2·G·N, 1, k)
        kx, kb, kc = cw[:d_inner], cw[d_inner : d_inner + gn], cw[d_inner + gn :]
        flat = kb.reshape(gn, -1)
        new_kb = [_rows_like(flat, extra, 1.0, g).reshape(extra, *cw.shape[1:]) for _ in range(groups)]
        new_kc = [
            _rows_like(kc.reshape(gn, -1), extra, 1.0, g).reshape(extra, *cw.shape[1:]) for _ in range(groups)
        ]
        sd[p + "conv1d.weight"] = torch.cat(
            [kx, join(split_groups(kb), new_kb), join(split_groups(kc), new_kc)]
        )
        if p + "conv1d.bias" in sd:
            cb = sd[p + "conv1d.bias"]
            bx, bb, bc = cb[:d_inner], cb[d_inner : d_inner + gn], cb[d_inner + gn :]
            new_bb = [torch.full((extra,), float(blk.mean()), dtype=cb.dtype) for blk in split_groups(bb)]
            new_bc = [torch.zeros(extra, dtype=cb.dtype) for _ in range(groups)]
            sd[p + "conv1d.bias"] = torch.cat(
                [bx, join(split_groups(bb), new_bb), join(split_groups(bc), new_bc)]
            )


def _write_folder(src: Path, dst: Path, cfg: dict, record: dict, sd: dict) -> None:
    """Write ``dst`` whole or not at all: ``src``'s other files, the new config, record and weights."""
    from safetensors.torch import save_file

    parent = src / "training.json"
    record["init_record"] = json.loads(parent.read_text()) if parent.is_file() else None
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in {"config.json", "model.safetensors", "training.json"}:
            shutil.copy(f, tmp / f.name)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    save_file(
        {k: v.contiguous() for k, v in sd.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"}
    )
    tmp.rename(dst)  # the folder appears whole or not at all


def _read_source(src: Path, dst: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    cfg_path, weights = src / "config.json", src / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise WidenError(f"{src}: needs config.json and model.safetensors (one shard)")
    if dst.exists():
        raise WidenError(f"{dst} exists; choose a new folder")
    cfg = json.loads(cfg_path.read_text())
    kind = cfg.get("model_type")
    if kind not in SUPPORTED:
        raise WidenError(f"{src}: model_type {kind!r}; allowed: {', '.join(SUPPORTED)}")
    return cfg, load_file(str(weights))


def widen_state(
    src: Path | str, dst: Path | str, factor: int = 2, seed: int = 0, b_scale: float = 0.5
) -> dict:
    """Write ``src``'s checkpoint to ``dst`` with ``state_size`` × ``factor`` (see the module docstring);
    return the record that ``dst/training.json`` keeps (the source's record nested under ``init_record``)."""
    src, dst = Path(src), Path(dst)
    if not isinstance(factor, int) or factor < 2:
        raise WidenError(f"factor={factor!r}: the state grows by a whole factor of at least 2")
    if not b_scale > 0:
        raise WidenError(f"b_scale={b_scale!r}: the new B rows need a positive size")
    cfg, sd = _read_source(src, dst)
    kind = cfg["model_type"]
    n = int(cfg["state_size"])
    extra = n * (factor - 1)
    g = torch.Generator().manual_seed(seed)
    layers = int(cfg["num_hidden_layers"])
    if kind == "mamba":
        _widen_mamba1(sd, layers, n, extra, b_scale, g)
    else:
        d_inner = int(cfg["num_heads"]) * int(cfg["head_dim"])
        _widen_mamba2(sd, layers, n, extra, int(cfg.get("n_groups", 1)), d_inner, b_scale, g)
    cfg["state_size"] = n * factor
    record = {
        "widened_state": {
            "from": str(src),
            "state_size": [n, n * factor],
            "seed": seed,
            "b_scale": b_scale,
            "note": "new state dimensions written (random B rows) but not read (zero C): same function",
        },
        "parameters": sum(t.numel() for t in sd.values() if t.is_floating_point()),
    }
    _write_folder(src, dst, cfg, record, sd)
    return record


def deepen_layers(src: Path | str, dst: Path | str, after: list[int]) -> dict:
    """Write ``src``'s checkpoint to ``dst`` with a copy of layer i inserted right after layer i, for each i
    in ``after`` (its mixer's ``out_proj`` zero, so the function is unchanged; see the module docstring);
    return the record that ``dst/training.json`` keeps."""
    src, dst = Path(src), Path(dst)
    cfg, sd = _read_source(src, dst)
    layers = int(cfg["num_hidden_layers"])
    bad = [i for i in after if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < layers]
    if not after or bad or len(set(after)) != len(after):
        raise WidenError(
            f"after={after!r}: distinct layer indices in 0..{layers - 1}, at least one "
            f"(the model has {layers} layers)"
        )

    def block(i: int) -> dict[str, torch.Tensor]:
        prefix = f"backbone.layers.{i}."
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

    order: list[tuple[int, bool]] = []  # (source layer, is a new copy)
    for i in range(layers):
        order.append((i, False))
        if i in after:
            order.append((i, True))
    out = {k: v for k, v in sd.items() if not k.startswith("backbone.layers.")}
    for new_index, (i, is_copy) in enumerate(order):
        for name, t in block(i).items():
            if is_copy:
                t = torch.zeros_like(t) if name.startswith("mixer.out_proj.") else t.clone()
            out[f"backbone.layers.{new_index}.{name}"] = t
    cfg["num_hidden_layers"] = len(order)
    record = {
        "deepened": {
            "from": str(src),
            "num_hidden_layers": [layers, len(order)],
            "copied_after": sorted(after),
            "new_layers": [n for n, (_, c) in enumerate(order) if c],
            "note": "each new layer copies the one before it with its mixer out_proj zero: same function",
        },
        "parameters": sum(t.numel() for t in out.values() if t.is_floating_point()),
    }
    _write_folder(src, dst, cfg, record, out)
    return record


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m lm_eval_ssmsteer.training.widen", description=__doc__.split("\n")[0]
    )
    p.add_argument("src", type=Path, help="a model folder (config.json, model.safetensors)")
    p.add_argument("dst", type=Path, help="a new folder for the widened model")
    p.add_argument("--factor", type=int, default=2, help="state_size × this (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--b-scale", type=float, default=0.5, help="new B rows' size against the old ones")
    p.add_argument(
        "--deepen",
        metavar="I,J,...",
        default=None,
        help="instead of widening the state: insert a copy of each listed layer right after it, its mixer "
        "out_proj zero (same function), e.g. 0,1,2,3,4,5 doubles a 6-layer model",
    )
    a = p.parse_args(argv)
    try:
        if a.deepen is not None:
            try:
                after = [int(x) for x in a.deepen.split(",") if x.strip()]
            except ValueError:
                raise WidenError(
                    f"--deepen {a.deepen!r}: comma-separated layer indices, e.g. 0,2,4"
                ) from None
            record = deepen_layers(a.src, a.dst, after)
        else:
            record = widen_state(a.src, a.dst, a.factor, a.seed, a.b_scale)
    except WidenError as e:
        p.error(str(e))
    if a.deepen is not None:
        d = record["deepened"]
        print(
            f"{a.dst}: {d['num_hidden_layers'][0]} -> {d['num_hidden_layers'][1]} layers, "
            f"{record['parameters']:,} parameters"
        )
        return 0
    w = record["widened_state"]
    print(
        f"{a.dst}: state_size {w['state_size'][0]} -> {w['state_size'][1]}, "
        f"{record['parameters']:,} parameters"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
