"""The causal effect of the mean activation difference (paper §5, eq. 1-2).

For a direction v at layer ℓ (e.g. δ̄_j, the mean activation difference at position j) the
finetuned model's layer-ℓ output is replaced, at every position, by

    h̃ = P_v h_base + (I - P_v) h_ft,   P_v = v vᵀ / ‖v‖²

(h_base: the base model's layer-ℓ output on the same tokens): the finetuned model keeps
everything except its component along v, which becomes the base model's. The effect is

    ΔCE(D) = CE(p_ft on D | h_ft ← h̃) - CE(p_ft on D),

the change of next-token cross-entropy, averaged over every predicted real token of D
(token-weighted, pads excluded). Positive: the finetuned model needs its component along v to
model D. It is measured on finetuning-like data D_ft and pretraining-like data D_pt; a direction
that carries the finetuning objective raises CE on D_ft far more than on D_pt.

Control: ``n_random`` "random difference" vectors, each the difference of the base model's
layer-ℓ activations at two random token positions of chat data (position ≥ 1: position 0 is the
BOS / attention-sink token, whose activations are outliers). Such differences are typical
directions of activation space (unlike Gaussian directions, which hardly carry any variance), so
their ΔCE says how much *any* in-distribution direction matters. The mean and standard deviation
of their ΔCE are reported beside each δ̄_j's.

All directions of one dataset are evaluated in one pass: per batch, the base activations are
captured once (stopping after layer ℓ) and the clean finetuned CE and layer-ℓ output computed once;
each direction's edited forward then restarts above layer ℓ from the cached states (the layers below
are the same for every direction) with several directions in one forward. Loss sums are accumulated
in float64; finished batches can be kept in a checkpoint file and an interrupted run resumed.
"""
from __future__ import annotations

import contextlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from ..adl.collect import _batches, _length_order
from ..adl.interventions import replace_component
from ..adl.steering import _Log
from ..models.pair import ModelPair
from ..models.tokens import pad_id, pad_right

__all__ = ["CausalConfig", "CausalResult", "random_difference_vectors", "delta_ce", "causal_effect"]

# Two random positions whose activations agree to this relative precision count as the same
# activation (e.g. the first tokens of a chat template, the same in every conversation): their
# difference is rounding noise, not a direction, and the pair is drawn again.
_SAME_ACTIVATION_RTOL = 1e-4
_MAX_DRAW_ROUNDS = 20


class CausalConfig(BaseModel):
    """How the causal effect is measured. ``n_texts`` texts of each dataset (D_ft, D_pt, and the
    chat data of the random baseline), each truncated to ``max_len`` tokens."""

    n_texts: int = Field(64, ge=1)
    max_len: int = Field(128, ge=2)
    n_random: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    # text tokens per edited forward (directions share a forward up to it); None: by device. Speed
    # and memory only, never results: not part of a fingerprint (CausalConfig.semantic)
    tokens_per_forward: int | None = Field(None, ge=1)

    def semantic(self) -> dict[str, Any]:
        """The fields that change results."""
        return self.model_dump(exclude={"tokens_per_forward"})


class CausalResult(BaseModel):
    """ΔCE of each δ̄_j (``delta[dataset][j]``) and of the random-difference baseline.

    ``random[dataset]`` holds the mean and the sample standard deviation (n-1; 0 for a single
    vector) of ``random_values[dataset]``. Datasets: ``"ft"`` (finetuning-like) and ``"pt"``
    (pretraining-like); ``n_texts`` and ``n_tokens`` (predicted tokens, i.e. Σ (len - 1)) also
    name ``"chat"``, the texts the random vectors were drawn from.
    """

    layer: int
    positions: list[int]
    delta: dict[str, list[float]]
    random: dict[str, dict[str, float]]
    random_values: dict[str, list[float]]
    n_texts: dict[str, int]
    n_tokens: dict[str, int]


# ------------------------------------------------------------------------------------------------
# validation (all before any compute)
# ------------------------------------------------------------------------------------------------


def _unit_directions(directions: torch.Tensor, hidden: int, what: str = "directions") -> torch.Tensor:
    """Rows of ``directions`` [V, d] scaled to unit norm (float32, CPU); ValueError for a wrong
    shape, a non-finite or a zero row. Normalised here in float64, so that the ``+1e-12`` guard of
    :func:`replace_component` never bends a short direction."""
    if not isinstance(directions, torch.Tensor):
        raise ValueError(f"{what} must be a tensor [V, {hidden}], not {type(directions).__name__}")
    if directions.dim() != 2 or directions.shape[1] != hidden:
        raise ValueError(f"{what} must have shape [V, {hidden}] (the model's hidden size is {hidden}), "
                         f"got {tuple(directions.shape)}")
    if directions.shape[0] == 0:
        raise ValueError(f"{what} is empty: give at least one direction")
    d = directions.detach().to("cpu", torch.float64)
    for i, row in enumerate(d):
        if not torch.isfinite(row).all():
            raise ValueError(f"{what} row {i} is not finite (NaN or inf)")
        if float(row.norm()) == 0.0:
            raise ValueError(f"{what} row {i} is the zero vector: it has no direction to replace")
    return (d / d.norm(dim=1, keepdim=True)).float()


def _as_rows(ids: Sequence[Sequence[int]], what: str) -> list[list[int]]:
    if ids is None or len(ids) == 0:
        raise ValueError(f"{what} is empty: give at least one text of token ids")
    return [[int(t) for t in r] for r in ids]


def _check_scoring_rows(ids: Sequence[Sequence[int]], what: str = "ids") -> list[list[int]]:
    rows = _as_rows(ids, what)
    short = [i for i, r in enumerate(rows) if len(r) < 2]
    if short:
        raise ValueError(f"{what}: {len(short)} text(s) have fewer than 2 tokens (e.g. row {short[0]}); "
                         "a text needs at least one predicted token")
    return rows


def _select_texts(ids: Sequence[Sequence[int]], cfg: CausalConfig, what: str) -> list[list[int]]:
    """The first ``cfg.n_texts`` texts with ≥ 2 tokens after truncation to ``cfg.max_len`` (shorter
    ones have nothing to predict and are skipped); ValueError if none is left."""
    rows = _as_rows(ids, what)
    kept = [r[:cfg.max_len] for r in rows if len(r) >= 2][:cfg.n_texts]
    if not kept:
        raise ValueError(f"{what}: none of its {len(rows)} texts has at least 2 tokens "
                         "(one to condition on, one to predict)")
    if len(kept) < cfg.n_texts:
        print(f"warning: {what}: {cfg.n_texts} texts requested, {len(kept)} usable "
              f"(of {len(rows)}; texts under 2 tokens skipped) — using {len(kept)}", file=sys.stderr, flush=True)
    return kept


# ------------------------------------------------------------------------------------------------
# compute
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(pair: ModelPair) -> Iterator[None]:
    """Both models in eval mode (no dropout) for the block; every module's flag restored after."""
    mods = {id(m): m for m in (pair.base_lm.model, pair.ft_lm.model)}.values()
    flags = [(sub, sub.training) for m in mods for sub in m.modules()]
    for m in mods:
        m.eval()
    try:
        yield
    finally:
        for sub, flag in flags:
            sub.training = flag


def _ce_sum(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> float:
    """Σ over predicted real tokens of -log p(x_{t+1} | x_≤t) (per-token loss in fp32, summed in fp64).

    Only positions whose input and target are both real count; they are selected (not multiplied
    by a mask), so whatever the model computes at pad positions cannot leak into the sum."""
    logits = model(input_ids=x, attention_mask=mask, use_cache=False).logits
    valid = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
    lp = logits[:, :-1][valid].float()
    return float(F.cross_entropy(lp, x[:, 1:][valid], reduction="none").double().sum())


def _ce_row_sums(logits: torch.Tensor, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[R] Σ per row of the per-token losses (fp32) at ``valid`` positions, in fp64 (pads selected
    away with ``where``, never multiplied)."""
    R, T, V = logits.shape
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), x[:, 1:].reshape(-1), reduction="none")
    loss = torch.where(valid.reshape(-1), loss, torch.zeros_like(loss)).double().view(R, T - 1)
    return loss.sum(1)


def directions_per_forward(cfg_tokens: int | None, rows: int, width: int, device: Any) -> int:
    """How many directions share one forward: ``rows × width × directions`` text tokens at most
    ``cfg_tokens`` (None: 2,048 on a CPU, 16,384 on an accelerator — bounds the logits' memory)."""
    budget = cfg_tokens or (2048 if torch.device(device).type == "cpu" else 16384)
    return max(1, budget // max(1, rows * width))


def delta_ce(pair: ModelPair, layer: int, directions: torch.Tensor, ids: Sequence[Sequence[int]], *,
             batch_size: int = 8, progress: bool | None = None, tokens_per_forward: int | None = None,
             done: dict[int, list[float]] | None = None,
             on_batch: Callable[[int, list[float]], None] | None = None) -> list[float]:
    """ΔCE (eq. 2) of each row of ``directions`` [V, d] on the token-id rows ``ids``.

    Each text is scored whole (no BOS added: give ids as the model should see them); texts are
    batched by length and right-padded. Per batch the base activations at ``layer``, the clean
    finetuned CE and the finetuned layer-``layer`` output are computed once; each direction's
    edited forward then restarts above ``layer`` from those cached states
    (:meth:`~difflens.models.arch.ArchAdapter.restart_after`), several directions per forward
    (the text batch repeated, ``tokens_per_forward`` text tokens at most).
    Token-weighted: Σ_texts Σ_tokens (edited - clean) / #predicted tokens.

    Resumable: ``done`` maps finished batch indices to their per-direction sums (edited - clean),
    which are not recomputed; ``on_batch(index, sums)`` is called after each batch computed here.
    The result is the same either way (the sums are added in batch order).
    """
    layer = pair.arch.resolve_layer(layer)
    units = _unit_directions(directions, pair.arch.hidden_size)
    rows = _check_scoring_rows(ids)
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    pad = pad_id(pair.tokenizer)
    V = units.shape[0]
    n_tokens = sum(len(r) - 1 for r in rows)
    batches = list(_batches(_length_order(rows), batch_size))
    done = dict(done or {})
    per_batch: dict[int, list[float]] = {}
    log = _Log(progress, f"causal effect layer {layer}")
    log(f"{V} directions on {len(rows)} texts ({n_tokens} predicted tokens), {len(batches)} batches"
        + (f", {sum(1 for b in done if b < len(batches))} already done" if done else ""))
    arch = pair.ft_arch
    with _eval_mode(pair), torch.no_grad():
        for bi, (_, members) in enumerate(batches):
            if bi in done and len(done[bi]) == V:
                per_batch[bi] = [float(v) for v in done[bi]]
                continue
            x, mask = pad_right([rows[j] for j in members], pad, pair.device)
            B, T = x.shape
            with pair.base() as model:
                h_base = pair.arch_of("base").capture(model, x, [layer], attention_mask=mask)[layer]
            seen: dict[str, torch.Tensor] = {}

            def read(h: torch.Tensor) -> None:
                seen["h"] = h.detach()

            with pair.ft() as model:
                with arch.edit_layer(layer, read):
                    clean = _ce_sum(model, x, mask)
                h_ft = seen["h"]
                valid = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
                step = directions_per_forward(tokens_per_forward, B, T, pair.device)
                sums: list[float] = []
                for v0 in range(0, V, step):
                    vs = range(v0, min(V, v0 + step))
                    edited = torch.cat([replace_component(units[v], h_base)(h_ft) for v in vs])
                    n = len(vs)
                    with arch.restart_after(layer, edited):
                        logits = model(input_ids=x.repeat(n, 1), attention_mask=mask.repeat(n, 1),
                                       use_cache=False).logits
                    row = _ce_row_sums(logits, x.repeat(n, 1), valid.repeat(n, 1)).view(n, B).sum(1)
                    del logits
                    sums += [float(r) - clean for r in row]
            per_batch[bi] = sums
            if on_batch is not None:
                on_batch(bi, sums)
            log(f"batch {bi + 1}/{len(batches)}")
    diffs = [0.0] * V
    for bi in range(len(batches)):
        for v in range(V):
            diffs[v] += per_batch[bi][v]
    return [s / n_tokens for s in diffs]


def random_difference_vectors(pair: ModelPair, ids: Sequence[Sequence[int]], layer: int, n: int, *, seed: int,
                              batch_size: int = 8) -> torch.Tensor:
    """``n`` vectors [n, d] (float32, CPU), each h_base(a) - h_base(b) for two distinct random token
    positions a, b (position ≥ 1 of any text of ``ids``, possibly different texts) of the base
    model's layer-``layer`` output. Deterministic by ``seed``.

    A pair whose two activations coincide (the same context, e.g. a chat template's first tokens)
    gives no direction and is drawn again; ValueError if that keeps happening. Only the texts a
    drawn position falls in are run through the base model.
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    rows = _as_rows(ids, "ids")
    layer = pair.arch.resolve_layer(layer)
    cands = [(i, p) for i, r in enumerate(rows) for p in range(1, len(r))]
    if len(cands) < 2:
        raise ValueError(f"ids have {len(cands)} token position(s) ≥ 1; random differences need at least 2")
    pad = pad_id(pair.tokenizer)
    acts: dict[int, torch.Tensor] = {}

    def fetch(needed: set[int]) -> None:
        todo = sorted(needed - acts.keys())
        with _eval_mode(pair), torch.no_grad(), pair.base() as model:
            for _, members in _batches(todo, batch_size):
                x, mask = pad_right([rows[i] for i in members], pad, pair.device)
                h = pair.arch_of("base").capture(model, x, [layer], attention_mask=mask)[layer]
                for r, i in enumerate(members):
                    acts[i] = h[r, :len(rows[i])].float().cpu()

    g = torch.Generator().manual_seed(int(seed))
    out: list[torch.Tensor] = []
    for _ in range(_MAX_DRAW_ROUNDS):
        need = n - len(out)
        a = torch.randint(len(cands), (need,), generator=g)
        b = (a + 1 + torch.randint(len(cands) - 1, (need,), generator=g)) % len(cands)  # b ≠ a
        pairs = [(cands[int(i)], cands[int(j)]) for i, j in zip(a, b)]
        fetch({ia for (ia, _), _ in pairs} | {ib for _, (ib, _) in pairs})
        for (ia, pa), (ib, pb) in pairs:
            x, y = acts[ia][pa], acts[ib][pb]
            diff = x - y
            if float(diff.norm()) > _SAME_ACTIVATION_RTOL * max(float(x.norm()), float(y.norm())):
                out.append(diff)
        if len(out) == n:
            return torch.stack(out)
    raise ValueError(f"only {len(out)} of {n} random position pairs had different activations after "
                     f"{_MAX_DRAW_ROUNDS} rounds of draws: the texts are too repetitive; give more varied chat data")


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def causal_effect(pair: ModelPair, layer: int, deltas: torch.Tensor, ft_ids: Sequence[Sequence[int]],
                  pt_ids: Sequence[Sequence[int]], chat_ids: Sequence[Sequence[int]], cfg: CausalConfig | None = None,
                  progress: bool | None = None, *, checkpoint: Path | None = None, key: str = "") -> CausalResult:
    """ΔCE of each row j of ``deltas`` [k, d] (δ̄_j at ``layer``) on D_ft (``ft_ids``) and D_pt
    (``pt_ids``), with the random-difference baseline drawn from ``chat_ids``; see the module docstring.

    Each id list contributes its first ``cfg.n_texts`` texts of ≥ 2 tokens, truncated to
    ``cfg.max_len``. Every input is checked before any compute.

    ``checkpoint``: a JSON file that keeps every finished text batch (per dataset, the per-direction
    sums) under ``key`` (the caller's fingerprint of the inputs); a rerun with the same key resumes
    from it and gives the same numbers as an uninterrupted run. The caller deletes it when done.
    """
    from ..files import write_json

    cfg = cfg or CausalConfig()
    layer = pair.arch.resolve_layer(layer)
    _unit_directions(deltas, pair.arch.hidden_size, "deltas")
    texts = {"ft": _select_texts(ft_ids, cfg, "ft_ids"), "pt": _select_texts(pt_ids, cfg, "pt_ids"),
             "chat": _select_texts(chat_ids, cfg, "chat_ids")}
    k = int(deltas.shape[0])
    log = _Log(progress, f"causal effect layer {layer}")
    log(f"{cfg.n_random} random-difference vectors from {len(texts['chat'])} chat texts")
    rand = random_difference_vectors(pair, texts["chat"], layer, cfg.n_random, seed=cfg.seed,
                                     batch_size=cfg.batch_size)
    directions = torch.cat([deltas.detach().to("cpu", torch.float32), rand])
    state: dict[str, Any] = {"key": key, "batches": {"ft": {}, "pt": {}}}
    if checkpoint is not None and checkpoint.exists():
        try:
            old = json.loads(checkpoint.read_text())
            if old.get("key") == key and old.get("directions") == int(directions.shape[0]):
                state = old
                log(f"resuming: {sum(len(b) for b in old['batches'].values())} finished batches in {checkpoint.name}")
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    state["directions"] = int(directions.shape[0])
    delta: dict[str, list[float]] = {}
    random_values: dict[str, list[float]] = {}
    for name in ("ft", "pt"):
        log(f"dataset {name}")
        finished = {int(b): v for b, v in state["batches"].get(name, {}).items()}

        def keep(bi: int, sums: list[float], name: str = name) -> None:
            if checkpoint is not None:
                state["batches"].setdefault(name, {})[str(bi)] = sums
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                write_json(checkpoint, state)

        vals = delta_ce(pair, layer, directions, texts[name], batch_size=cfg.batch_size, progress=progress,
                        tokens_per_forward=cfg.tokens_per_forward, done=finished, on_batch=keep)
        delta[name], random_values[name] = vals[:k], vals[k:]
    return CausalResult(
        layer=layer, positions=list(range(k)), delta=delta,
        random={name: _mean_std(v) for name, v in random_values.items()}, random_values=random_values,
        n_texts={name: len(rows) for name, rows in texts.items()},
        n_tokens={name: sum(len(r) - 1 for r in rows) for name, rows in texts.items()})
