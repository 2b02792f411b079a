"""Collection: mean activation differences δ̄_j of the first k tokens (paper §3).

For each dataset and layer ℓ this streams N samples through base and finetuned model,
truncated to k tokens (exact under causal attention) and stopped after the deepest requested
layer, and keeps float64 running sums, so memory does not grow with N. It writes
``delta``, ``base_mean``, ``ft_mean`` ([k, d] float32) and each model's mean norm η at ℓ
(positions ≥ 3, on a longer prefix of a subset). Interrupted runs resume from a checkpoint
of the running sums; an unchanged rerun is a no-op; a changed config recomputes.

Positions count from each sample's start (:class:`~difflens.data.corpora.TokenSample`): the
start of a plain text, or the start of the assistant's reply in a conversation, whose rendered
context is fed as a prefix. Rows of different lengths are right-padded and the k positions from
each row's start gathered; η on chat data averages the reply positions (≥ 3) only.
A dataset with fewer usable samples than requested is collected on what it has, with a warning
on stderr and the shortfall recorded in its stats and the manifest.
"""
from __future__ import annotations

import importlib.metadata as md
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, Field, field_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file

from ..data.corpora import Corpus, load_corpus, sample_ids
from ..errors import DataError, RunDirError
from ..models.pair import ModelPair
from ..models.precision import fingerprint_part
from ..models.tokens import bos_prefix_ids, pad_id, pad_right
from ..rundir.artifacts import Source
from ..rundir.layout import RunLayout, fingerprint, read_json, write_json
from ..models.packed import with_kept_packs


NORM_MIN_TEXTS = 16
NORM_MAX_TOKENS = 256 * 64
SUM_BLOCK = 64
"""The float64 sums behind δ̄ add the samples' windows this many at a time, in batching order,
whatever the batch size (:class:`_BlockSum`): a float sum depends on how its terms are grouped, so
summing per batch made δ̄ depend on the batch size (up to 9.5e-7 between 64 and 256). 64 is the
batch size the sums were made with before, so δ̄ stays bit-identical to earlier runs'."""
NORM_BATCH = SUM_BLOCK // 4
"""Texts per forward of the η calibration (fewer when ``batch_size`` is smaller): fixed, because η's
sums are per batch (16 texts × 64 tokens: about 1,000 rows, already a large matmul)."""


class CollectConfig(BaseModel):
    """What to collect. Defaults follow the paper: k=5, N=10,000, middle layer."""

    datasets: list[str] = Field(default_factory=lambda: ["wiki"])
    samples: int = Field(10_000, ge=1)
    positions: int = Field(5, ge=1, le=4096)
    layers: list[float | int] = Field(default_factory=lambda: [0.5])
    seed: int = 0
    # samples per forward (from 64 on rounded down to a multiple of SUM_BLOCK): speed and memory only
    batch_size: int = Field(256, ge=1)
    # texts of up to norm_len tokens for each model's norm η; "auto": about as many tokens as the
    # samples themselves (N·k), at least NORM_MIN_TEXTS texts and at most NORM_MAX_TOKENS tokens
    # (:meth:`norm_texts`), so that η never costs more than the means it scales
    norm_samples: int | Literal["auto"] = "auto"
    norm_len: int = Field(64, ge=4)
    text_field: str = "text"
    checkpoint_every: int = Field(25, ge=1)

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[float | int]) -> list[float | int]:
        if not v:
            raise ValueError("give at least one layer")
        return v

    @field_validator("norm_samples")
    @classmethod
    def _norm_samples(cls, v: int | str) -> int | str:
        if v != "auto" and int(v) < 1:
            raise ValueError("norm_samples must be ≥ 1 or 'auto'")
        return v

    def norm_texts(self) -> int:
        """How many texts η is measured on: ``norm_samples``, or for ``"auto"`` the number of
        ``norm_len``-token texts that holds about N·k tokens, within [NORM_MIN_TEXTS, the texts of
        NORM_MAX_TOKENS tokens] (256 texts of 64 tokens, the fixed default before; N·k ≥ 16,384,
        e.g. the paper's N = 10,000, k = 5, gives the same η as before)."""
        if self.norm_samples != "auto":
            return int(self.norm_samples)
        most = max(NORM_MIN_TEXTS, math.ceil(NORM_MAX_TOKENS / self.norm_len))
        return max(NORM_MIN_TEXTS, min(most, math.ceil(self.samples * self.positions / self.norm_len)))

    def semantic(self) -> dict[str, Any]:
        """The fields that change results (batch size and checkpointing do not); ``norm_samples`` as
        resolved (an "auto" that resolves to 256 keeps the fingerprints of runs from before "auto")."""
        out = self.model_dump(exclude={"batch_size", "checkpoint_every", "datasets"})
        out["norm_samples"] = self.norm_texts()
        return out


@dataclass
class Collected:
    """δ̄, h̄_base, h̄_ft for positions 0..k-1 at one layer of one dataset, and the norms η."""

    dataset: str
    layer: int
    delta: torch.Tensor
    base_mean: torch.Tensor
    ft_mean: torch.Tensor
    eta_base: float
    eta_ft: float
    n: int

    @property
    def positions(self) -> int:
        return int(self.delta.shape[0])

    def vectors(self, source: Source) -> torch.Tensor:
        """The [k, d] vectors of one source: δ̄ (``delta`` and ``delta_via_base``), h̄_base (``base`` and
        ``base_via_ft``),
        h̄_ft (``ft``) or the control ``random``: per position a random direction with δ̄_j's norm,
        seeded by layer and position (the same vectors every time)."""
        if source == "random":
            return random_like(self.delta, seed=self.layer)
        if source == "delta_via_base":
            return self.delta
        if source == "base_via_ft":
            return self.base_mean
        return {"delta": self.delta, "base": self.base_mean, "ft": self.ft_mean}[source]


def random_like(rows: torch.Tensor, *, seed: int) -> torch.Tensor:
    """For each row a random Gaussian direction scaled to that row's norm (deterministic by ``seed``
    and row index)."""
    out = torch.empty_like(rows, dtype=torch.float32)
    for j in range(rows.shape[0]):
        g = torch.Generator().manual_seed(1_000_003 * (seed + 1) + j)
        r = torch.randn(rows.shape[1], generator=g)
        out[j] = r / r.norm() * rows[j].float().norm()
    return out


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("difflens", "torch", "transformers", "peft"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _batches(ids: Sequence[Sequence[int]], bs: int, start: int = 0):
    for i in range(start, len(ids), bs):
        yield i, ids[i:i + bs]


def _sample_batches(order: Sequence[int], bs: int, start: int = 0):
    """Collect's forward batches over ``order`` from ``start``: (first index, members). A batch holds
    whole :data:`SUM_BLOCK` blocks (``bs`` rounded down to a multiple of it when larger), and the
    last, partial block runs on its own, as it did with batches of 64: a matmul over that block's
    few rows can round differently from the same rows inside a larger one (MKL, 80 rows)."""
    step = bs - bs % SUM_BLOCK if bs >= SUM_BLOCK else bs
    n = len(order)
    tail = n - n % SUM_BLOCK
    i = start
    while i < n:
        end = min(i + step, n)
        if i < tail < end:
            end = tail
        yield i, order[i:end]
        i = end


def _length_order(ids: Sequence[Sequence[int]]) -> list[int]:
    """Sample indices in batching order: as sampled when all rows have one length (plain text),
    else by length (stable), so that right-padded batches of chat rows waste little."""
    if len({len(r) for r in ids}) <= 1:
        return list(range(len(ids)))
    return sorted(range(len(ids)), key=lambda i: len(ids[i]))


def _batch_input(rows: Sequence[Sequence[int]], pad: int, device: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows of one length as they are (no mask); rows of different lengths right-padded with a mask
    (under causal attention the padding never reaches the real positions)."""
    if len({len(r) for r in rows}) == 1:
        return torch.tensor([list(r) for r in rows], dtype=torch.long, device=device), None
    return pad_right(rows, pad, device)


class _BlockSum:
    """A float64 sum of [n, k, d] windows added in blocks of :data:`SUM_BLOCK` rows of the order they
    come in: the rows of an unfinished block wait (``carry``) for the next batch, so any batch size
    groups the terms the same way and gives the same bits."""

    def __init__(self, total: torch.Tensor, carry: torch.Tensor | None = None) -> None:
        self.total, self.carry = total, carry

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.double()
        if self.carry is not None:
            rows = torch.cat([self.carry.to(rows.device), rows])
        full = rows.shape[0] - rows.shape[0] % SUM_BLOCK
        for j in range(0, full, SUM_BLOCK):
            self.total += rows[j:j + SUM_BLOCK].sum(0).to(self.total.device)
        self.carry = rows[full:].to(self.total.device) if full < rows.shape[0] else None

    def result(self) -> torch.Tensor:
        """The sum of every row added (the last, partial block included)."""
        if self.carry is not None:
            self.total += self.carry.sum(0)
            self.carry = None
        return self.total


def _window(h: torch.Tensor, starts: Sequence[int], k: int) -> torch.Tensor:
    """``h[b, starts[b]:starts[b] + k]`` for every row b: the [B, k, d] activations of the sampled positions."""
    if h.shape[1] == k and not any(starts):
        return h
    idx = torch.tensor(list(starts), device=h.device).unsqueeze(1) + torch.arange(k, device=h.device)
    return h[torch.arange(h.shape[0], device=h.device).unsqueeze(1), idx]


def mean_norms(pair: ModelPair, ids: Sequence[Sequence[int]], layers: Sequence[int], *, batch_size: int,
               skip: int = 3, starts: Sequence[int] | None = None) -> dict[str, dict[int, float]]:
    """Mean L2 norm of each model's layer outputs over positions ≥ ``skip`` (right-padded batches);
    with ``starts``, over positions ≥ max(skip, starts[i]) of row i (the reply of a chat sample)."""
    pad = pad_id(pair.tokenizer)
    out: dict[str, dict[int, float]] = {}
    for side in ("base", "ft"):
        sums = {li: 0.0 for li in layers}
        count = 0
        with pair.side(side) as model:
            for i, batch in _batches(ids, batch_size):
                x, mask = pad_right(batch, pad, pair.input_device(side))
                hs = pair.arch_of(side).capture(model, x, layers, attention_mask=mask)
                valid = mask.clone()
                valid[:, :skip] = 0
                if starts is not None:
                    for r, s in enumerate(starts[i:i + len(batch)]):
                        valid[r, :s] = 0
                count += int(valid.sum())
                for li in layers:  # norms in float64 on the layer's device, the mask moved there
                    sums[li] += float((hs[li].double().norm(dim=-1) * valid.to(hs[li].device)).sum())
        if count == 0:
            raise DataError(f"no tokens at positions ≥ {skip} to estimate activation norms; use longer texts.")
        out[side] = {li: sums[li] / count for li in layers}
    return out


def load_collected(layout: RunLayout, dataset: str, layer: int) -> Collected:
    """Read one collected layer back as a typed artifact."""
    path = layout.collect_file(dataset, layer)
    if not path.exists():
        raise RunDirError(f"{path} is missing; run `difflens collect` for dataset '{dataset}' layer {layer}.")
    stats = read_json(layout.collect_stats(dataset))
    try:
        t = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several error types
        raise RunDirError(f"{path} is corrupt ({e}); delete it and rerun `difflens collect`.") from e
    eta = stats["eta"][str(layer)]
    return Collected(dataset, layer, t["delta"], t["base_mean"], t["ft_mean"], eta["base"], eta["ft"], stats["n_used"])


# How a conversation is sampled; part of the fingerprint of chat data only (plain-text fingerprints,
# and so earlier plain-text runs, are unchanged). Bump when chat sampling changes.
CHAT_SAMPLING = "first-assistant-reply/v1"


def _stage_fp(pair: ModelPair, corpus: Corpus, cfg: CollectConfig, layers: list[int]) -> str:
    d = pair.describe()
    what = {"base": d["base"]["fingerprint"], "ft": d["finetuned"]["fingerprint"],
            "data": corpus.content_hash, "cfg": cfg.semantic(), "abs_layers": layers}
    if corpus.is_chat:
        what["chat_sampling"] = CHAT_SAMPLING
    return fingerprint(what | fingerprint_part(getattr(pair, "precision", None)))


def _chat_bos(tokenizer: Any, arch: Any) -> list[int]:
    """The BOS that text rendered with a chat template must start with — the policy of
    :func:`difflens.models.tokens.chat_prompt_ids`: the template's own special tokens are kept, and
    an architecture trained with BOS gets it where the template does not write it."""
    if arch.uses_bos and tokenizer.bos_token_id is not None:
        return [int(tokenizer.bos_token_id)]
    return []


def _shortfall(ds: dict[str, Any]) -> int:
    return max(0, int(ds.get("n_requested", 0)) - int(ds.get("n_used", 0)))


def _warn_shortfall(ds: dict[str, Any]) -> None:
    """One line on stderr when a dataset has fewer usable samples than requested."""
    if not ds.get("shortfall"):
        return
    why = [f"{ds.get('n_skipped_short', 0)} too short"]
    if ds.get("n_skipped_no_reply"):
        why.append(f"{ds['n_skipped_no_reply']} without an assistant reply")
    print(f"warning: {ds['name']}: {ds['n_requested']} samples requested, {ds['n_used']} usable "
          f"(of {ds.get('n_available', '?')} records; {', '.join(why)}) — using {ds['n_used']}",
          file=sys.stderr, flush=True)


@with_kept_packs
def collect(pair: ModelPair, layout: RunLayout, cfg: CollectConfig, *, progress: bool = True,
            stop_after_batches: int | None = None) -> dict[str, list[Collected]]:
    """Run collection for every dataset of ``cfg``; see the module docstring.

    ``stop_after_batches`` interrupts deliberately (tests of resumption).
    """
    layout.ensure()
    arch = pair.arch
    layers = sorted({arch.resolve_layer(x) for x in cfg.layers})
    corpora = [load_corpus(name, text_field=cfg.text_field) for name in cfg.datasets]  # fail before compute
    bos = bos_prefix_ids(pair.tokenizer, arch)
    chat_bos = _chat_bos(pair.tokenizer, arch)
    pad = pad_id(pair.tokenizer)
    K = cfg.positions
    results: dict[str, list[Collected]] = {}
    manifest_datasets = []
    earlier = _earlier_datasets(layout, pair, K, layers)
    for corpus in corpora:
        fp = _stage_fp(pair, corpus, cfg, layers)
        stats_path = layout.collect_stats(corpus.name)
        if stats_path.exists():
            try:
                old = read_json(stats_path)
            except RunDirError:
                old = {}
            if old.get("fingerprint") == fp and all(layout.collect_file(corpus.name, li).exists() for li in layers):
                results[corpus.name] = [load_collected(layout, corpus.name, li) for li in layers]
                ds_old = dict(old["dataset"])
                ds_old.setdefault("shortfall", _shortfall(ds_old))  # runs written before it was recorded
                _warn_shortfall(ds_old)
                manifest_datasets.append(ds_old)
                continue
        sample = sample_ids(corpus, pair.tokenizer, n=cfg.samples, k=K, seed=cfg.seed, max_len=K, bos=bos,
                            chat_bos=chat_bos)
        if not sample.ids:
            what = "assistant reply" if corpus.is_chat else "text"
            extra = f", {sample.n_no_reply} without an assistant reply" if sample.n_no_reply else ""
            raise DataError(f"dataset '{corpus.name}' has no {what} with at least {K} tokens "
                            f"({sample.n_skipped} too short{extra}); use a longer corpus or fewer --positions.")
        ds_info = {"name": corpus.name, "content_hash": corpus.content_hash, "info": corpus.info,
                   "n_requested": cfg.samples, "n_used": len(sample.ids), "n_skipped_short": sample.n_skipped,
                   "n_available": len(corpus.texts), "sample_hash": sample.order_hash}
        if corpus.is_chat:
            ds_info.update({"n_skipped_no_reply": sample.n_no_reply, "positions_from": "assistant_reply",
                            "chat_sampling": CHAT_SAMPLING})
        ds_info["shortfall"] = _shortfall(ds_info)
        _warn_shortfall(ds_info)
        partial = layout.collect_partial(corpus.name)
        partial.parent.mkdir(parents=True, exist_ok=True)
        dim = arch.hidden_size
        sums = {s: {li: _BlockSum(torch.zeros(K, dim, dtype=torch.float64)) for li in layers} for s in ("base", "ft")}
        start, n_done = 0, 0
        if partial.exists():
            try:
                ck = torch.load(partial, weights_only=True)
            except Exception:  # noqa: BLE001 - a torn checkpoint just means: start over
                ck = {}
            if ck.get("fingerprint") == fp:
                start, n_done = int(ck["next"]), int(ck["n"])
                carry = ck.get("carry") or {}  # checkpoints written before the block sums: none
                sums = {s: {li: _BlockSum(ck["sums"][s][li], carry.get(s, {}).get(li)) for li in layers}
                        for s in ("base", "ft")}
        t0 = time.time()
        order = _length_order(sample.ids)
        batches = list(_sample_batches(order, cfg.batch_size, start))
        with Progress(TextColumn(f"collect {corpus.name}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), disable=not progress, transient=True) as bar:
            task = bar.add_task("collect", total=len(sample.ids), completed=n_done)
            for bi, (i, members) in enumerate(batches):
                batch = [sample.ids[j] for j in members]
                starts = [sample.starts[j] for j in members]
                x, mask = _batch_input(batch, pad, None)
                for side in ("base", "ft"):
                    with pair.side(side) as model:  # inputs go to the side's embedding device (capture)
                        hs = pair.arch_of(side).capture(model, x, layers, attention_mask=mask)
                    for li in layers:  # float64 block sums on the layer's device, accumulated on the CPU
                        sums[side][li].add(_window(hs[li], starts, K))
                n_done += len(batch)
                bar.update(task, completed=n_done)
                nxt = i + len(batch)
                last = nxt >= len(sample.ids)
                if (bi + 1) % cfg.checkpoint_every == 0 or (stop_after_batches and bi + 1 >= stop_after_batches):
                    if not last:
                        torch.save({"fingerprint": fp, "next": nxt, "n": n_done,
                                    "sums": {s: {li: b.total for li, b in v.items()} for s, v in sums.items()},
                                    "carry": {s: {li: b.carry for li, b in v.items()} for s, v in sums.items()}},
                                   partial)
                if stop_after_batches and bi + 1 >= stop_after_batches and not last:
                    raise KeyboardInterrupt(f"collection stopped after {bi + 1} batches (test hook)")
        sums = {s: {li: b.result() for li, b in v.items()} for s, v in sums.items()}
        overflow = [f"{s} layer {li}" for s in ("base", "ft") for li in layers if not torch.isfinite(sums[s][li]).all()]
        if overflow:
            partial.unlink(missing_ok=True)
            raise DataError(f"non-finite activations ({', '.join(overflow)}) with the pair in "
                            f"{getattr(pair, 'precision', '?')}: the model overflows that dtype's range; rerun with "
                            "--dtype bf16-fp32res (or float32).")
        norm_sample = sample_ids(corpus, pair.tokenizer, n=cfg.norm_texts(), k=4, seed=cfg.seed + 1,
                                 max_len=cfg.norm_len, bos=bos, chat_bos=chat_bos)
        eta = mean_norms(pair, norm_sample.ids, layers, batch_size=max(1, min(cfg.batch_size // 4, NORM_BATCH)),
                         starts=norm_sample.starts if corpus.is_chat else None)
        out = []
        for li in layers:
            base_mean = (sums["base"][li] / n_done)
            ft_mean = (sums["ft"][li] / n_done)
            tensors = {"delta": (ft_mean - base_mean).float().contiguous(),
                       "base_mean": base_mean.float().contiguous(), "ft_mean": ft_mean.float().contiguous()}
            layout.collect_file(corpus.name, li).parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(layout.collect_file(corpus.name, li)),
                      metadata={"dataset": corpus.name, "layer": str(li), "n": str(n_done), "fingerprint": fp})
            out.append(Collected(corpus.name, li, tensors["delta"], tensors["base_mean"], tensors["ft_mean"],
                                 eta["base"][li], eta["ft"][li], n_done))
        ds_info.update({"norm_samples": len(norm_sample.ids), "norm_len": cfg.norm_len})
        write_json(stats_path, {"fingerprint": fp, "dataset": ds_info, "n_used": n_done,
                                "eta": {str(li): {"base": eta["base"][li], "ft": eta["ft"][li]} for li in layers},
                                "seconds": round(time.time() - t0, 2)})
        partial.unlink(missing_ok=True)
        results[corpus.name] = out
        manifest_datasets.append(ds_info)
    L = arch.num_layers
    write_json(layout.manifest, {
        "models": pair.describe(),
        "datasets": [d for d in earlier if d["name"] not in {m["name"] for m in manifest_datasets}]
        + manifest_datasets,
        "positions": K,
        "layers": [{"absolute": li, "relative": round(li / L, 4), "requested": str(r)}
                   for li, r in zip(layers, _requested_for(layers, cfg.layers, arch))],
        "seed": cfg.seed,
        "config": cfg.model_dump(),
        "versions": versions(),
    })
    return results


def _earlier_datasets(layout: RunLayout, pair: ModelPair, k: int, layers: list[int]) -> list[dict[str, Any]]:
    """Datasets an earlier `collect` into the same run directory recorded (kept in the manifest
    when positions and layers agree). A run directory belongs to one model pair: another pair is
    refused before any compute."""
    if not layout.manifest.exists():
        return []
    try:
        old = read_json(layout.manifest)
        old_models = old["models"]
    except (RunDirError, KeyError):
        return []
    new = pair.describe()
    for side in ("base", "finetuned"):
        if old_models[side]["fingerprint"] != new[side]["fingerprint"]:
            raise RunDirError(
                f"{layout.root} holds results for another model pair ({side}: {old_models[side]['spec']}, "
                f"fingerprint {old_models[side]['fingerprint']}); use a new --out directory.")
    same_shape = old.get("positions") == k and [x["absolute"] for x in old.get("layers", [])] == layers
    return list(old.get("datasets", [])) if same_shape else []


def _requested_for(layers: list[int], requested: list[float | int], arch: Any) -> list[Any]:
    by_abs = {}
    for r in requested:
        by_abs.setdefault(arch.resolve_layer(r), r)
    return [by_abs.get(li, li) for li in layers]
