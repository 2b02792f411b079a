"""Per-token KL and activation differences, with their top contexts.

At every position of N samples × T tokens: KL(P_ft ‖ P_base) of the two models' next-token
distributions over the full shared vocabulary, and at layer ℓ the norm of the activation
difference ‖h_ft − h_base‖ and the cosine distance 1 − cos(h_ft, h_base). The first
``skip_positions`` positions (default 1: the attention sink) are left out of every statistic but
the per-position means. Streaming, per
statistic: count, sum, sum of squares and maximum over tokens, the mean per position (0..T−1),
histograms over fixed log-spaced bins (with under- and overflow) of the per-token values and of
the per-sample means and maxima. Per sample, the window's values go to an SQLite
:class:`~difflens.methods.store.ExamplesStore` that a viewer pages by any per-sample statistic
(``kl_max``, ``norm_mean``, …) with the token of the maximum marked.

Beside the pair's statistics, a baseline from one model alone: the finetuned model's next-token
entropy H(P_ft) in nats (``ent``), with the same summaries, histograms and store rankings
(``ent_max``, ``ent_mean``): where the pair differs most (KL) beside where the finetuned model
alone is least certain. If the top KL contexts are merely the most uncertain ones, KL adds little.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator

from ..errors import ConfigError
from .base import DiffMethod, MethodResult, PairBatch, check_layer_value, resolve_layer_option, row_chunks
from .store import Example, ExampleRow, ExamplesStore

__all__ = ["KLConfig", "KLResult", "TokenKL", "RankedToken", "StatSummary", "Histogram", "STATS", "BASELINES", "BINS"]

# KL(P_ft‖P_base) in nats; ‖h_ft − h_base‖; 1 − cos(h_ft, h_base); baseline: H(P_ft) in nats
STATS = ("kl", "norm", "cos", "ent")
BASELINES = ("ent",)  # the statistics read from one model alone

# Fixed bins (part of the method's version): log10-spaced edges, values below the first edge count
# in the underflow bin and above the last in the overflow bin. KL and cosine distance are ≥ 0 and
# small for a narrow finetune; norms range over the model's scale.
BINS: dict[str, tuple[float, float, int]] = {  # stat -> (log10 low, log10 high, bins)
    "kl": (-6.0, 2.0, 64),
    "norm": (-3.0, 4.0, 56),
    "cos": (-7.0, math.log10(2.0), 60),
    "ent": (-5.0, 1.5, 65),  # up to 31.6 nats (ln V is 10.8 for a vocabulary of 49,152)
}


def bin_edges(stat: str) -> torch.Tensor:
    lo, hi, n = BINS[stat]
    return torch.logspace(lo, hi, n + 1, dtype=torch.float64)


class KLConfig(BaseModel):
    """Options: ``layer`` of the activation differences (absolute or relative depth);
    ``skip_positions``: the first positions of each sample left out of every statistic but the
    per-position means (position 0 is the attention sink: its activations are orders of magnitude
    larger than the rest, so its ‖h_ft − h_base‖ tops every ranking); how many top contexts per
    statistic the result previews (the store keeps every sample, with every position's values)."""

    layer: float | int = 0.5
    skip_positions: int = Field(1, ge=0)
    preview: int = Field(5, ge=0)
    top_n: int = Field(100, ge=1)  # ids kept per token ranking
    min_count: int = Field(5, ge=1)  # "raised": positions an id must be raised most at to be ranked
    chunk_elements: int = Field(1 << 22, ge=1)

    @field_validator("layer")
    @classmethod
    def _layer(cls, v: Any) -> Any:
        return check_layer_value(v)

    def semantic(self) -> dict[str, Any]:
        return self.model_dump(exclude={"chunk_elements", "preview"})


class Histogram(BaseModel):
    edges: list[float]  # n + 1 edges; counts[0] is below edges[0], counts[-1] above edges[-1]
    counts: list[int]  # n + 2


class StatSummary(BaseModel):
    """One statistic over all tokens (at positions ≥ skip_positions), and over samples."""

    count: int
    mean: float
    std: float
    max: float
    by_position: list[float]  # mean at each position 0..T-1 (the skipped ones too)
    tokens: Histogram  # per-token values
    sample_means: Histogram
    sample_maxes: Histogram
    top: dict[str, list[Example]]  # "max" / "mean" -> the top samples by that per-sample aggregate


class RankedToken(BaseModel):
    token_id: int
    token: str
    weight: float  # the ranking's score (e.g. Σ KL over the positions where this token was raised most)
    count: int  # positions counted for it


class KLResult(MethodResult):
    layer: int
    skip_positions: int
    stats: dict[str, StatSummary]  # "kl", "norm", "cos" and the baseline "ent"
    # the tokens KL points at: "raised" — per vocabulary id, the mean KL over the positions where the
    # finetune raised its probability most (argmax of p_ft − p_base), among ids raised most at ≥
    # min_count positions: a token the finetune pushes where it changes the distribution most ranks
    # first, and a frequent token nudged a little everywhere (" the") does not; "raised_total" — the
    # sum instead of the mean (frequent tokens accumulate); "ft_top" (the baseline, the finetuned model
    # alone) — how often the id is its own top prediction. Positions ≥ skip_positions.
    rankings: dict[str, list[RankedToken]] = {}
    baselines: list[str] = list(BASELINES)  # the stats of one model alone (H(P_ft)), not of the pair
    store: str  # the examples store's file name (beside the result)


class TokenKL(DiffMethod):
    name: ClassVar[str] = "kl"
    version: ClassVar[int] = 4  # 2: the baseline H(P_ft); 3: the token rankings; 4: "raised" by mean KL
    result_type: ClassVar[type[MethodResult]] = KLResult

    def __init__(self, config: KLConfig | None = None, **options: Any):
        self.config = config or KLConfig(**options)
        self.store: ExamplesStore | None = None

    def prepare(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().prepare(ctx)
        self.layer = resolve_layer_option(ctx, self.config.layer, "--layer")
        self.precheck(ctx.vocab_size, ctx.tokens)

    def precheck(self, vocab_size: int, tokens: int) -> None:
        if self.config.skip_positions >= tokens:
            raise ConfigError(f"--skip-positions {self.config.skip_positions} leaves none of the {tokens} "
                              "positions per sample; use more --tokens or skip fewer.")

    def fingerprint_inputs(self) -> dict[str, Any]:
        return {**super().fingerprint_inputs(), "abs_layer": self.layer, "bins": BINS}

    def needs(self) -> set[int]:
        return {self.ctx.num_layers - 1, self.layer}

    def outputs_present(self) -> bool:
        return self.ctx.store_path is not None and self.ctx.store_path.exists()

    def can_resume(self, n_done: int) -> bool:
        from ..errors import RunDirError

        if self.ctx.store_path is None or not self.ctx.store_path.exists():
            return False
        try:
            with ExamplesStore.open(self.ctx.store_path, fingerprint=self.ctx.fingerprint) as st:
                return st.count() >= n_done  # rows past the checkpoint are rewritten identically
        except RunDirError:
            return False

    # -- running statistics ----------------------------------------------------------------------
    def start(self, state: dict[str, Any] | None) -> None:
        T = self.ctx.tokens
        if state is None:
            self.acc = {s: {"count": torch.zeros((), dtype=torch.int64), "sum": torch.zeros((), dtype=torch.float64),
                            "sumsq": torch.zeros((), dtype=torch.float64),
                            "max": torch.full((), -math.inf, dtype=torch.float64),
                            "pos_sum": torch.zeros(T, dtype=torch.float64),
                            "hist": torch.zeros(BINS[s][2] + 2, dtype=torch.int64),
                            "hist_mean": torch.zeros(BINS[s][2] + 2, dtype=torch.int64),
                            "hist_max": torch.zeros(BINS[s][2] + 2, dtype=torch.int64)} for s in STATS}
        else:
            self.acc = {s: {k: v.clone() for k, v in state[s].items()} for s in STATS}
        V = self.ctx.vocab_size
        self.acc["_tokens"] = ({k: v.clone() for k, v in state["_tokens"].items()} if state and "_tokens" in state else
                               {"raised": torch.zeros(V, dtype=torch.float64),
                                "raised_count": torch.zeros(V, dtype=torch.int64),
                                "ft_top": torch.zeros(V, dtype=torch.int64)})
        if self.ctx.store_path is None:
            raise ValueError("the kl method keeps its contexts in a store: give PassContext.store_path")
        meta = {"dataset": self.ctx.dataset, "tokens": T, "layer": self.layer}
        if state is None:
            self.store = ExamplesStore.create(self.ctx.store_path, fingerprint=self.ctx.fingerprint, stats=STATS,
                                              meta=meta)
        else:
            self.store = ExamplesStore.resume(self.ctx.store_path, fingerprint=self.ctx.fingerprint, stats=STATS,
                                              meta=meta)

    def values(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        """Per-token statistics of one batch: stat -> [B, T] float32."""
        V = self.ctx.vocab_size
        lf = batch.logits("ft").reshape(-1, V)
        lb = batch.logits("base").reshape(-1, V).to(lf.device)  # a split pair: both on ft's device
        kl = torch.empty(lf.shape[0], dtype=torch.float32, device=lf.device)
        ent = torch.empty_like(kl)
        raised = torch.empty(lf.shape[0], dtype=torch.long, device=lf.device)
        ft_top = torch.empty_like(raised)
        for s in row_chunks(lf.shape[0], V, self.config.chunk_elements):
            pf, pb = F.log_softmax(lf[s], dim=-1), F.log_softmax(lb[s], dim=-1)
            kl[s] = F.kl_div(pb, pf, reduction="none", log_target=True).sum(-1).clamp_min(0.0)
            raised[s] = (pf.exp() - pb.exp()).argmax(-1)  # the id whose probability the finetune raised most
            ft_top[s] = pf.argmax(-1)
            # H(P_ft) = −Σ p log p; a logit of −inf (p = 0) contributes 0, not nan
            ent[s] = (pf.exp() * -pf.clamp_min(torch.finfo(pf.dtype).min)).sum(-1).clamp_min(0.0)
        hf = batch.hidden["ft"][self.layer].float()
        hb = batch.hidden["base"][self.layer].float().to(hf.device)
        norm = (hf - hb).norm(dim=-1)
        cos = (1.0 - F.cosine_similarity(hf, hb, dim=-1, eps=1e-12)).clamp_min(0.0)
        B, T = batch.ids.shape
        self._ids = {"raised": raised.reshape(B, T).cpu(), "ft_top": ft_top.reshape(B, T).cpu()}
        return {"kl": kl.reshape(B, T).cpu(), "norm": norm.reshape(B, T).cpu(), "cos": cos.reshape(B, T).cpu(),
                "ent": ent.reshape(B, T).cpu()}

    def update(self, batch: PairBatch) -> None:
        vals = self.values(batch)
        k = self.config.skip_positions
        tok, V = self.acc["_tokens"], self.ctx.vocab_size
        raised = self._ids["raised"][:, k:].reshape(-1)
        tok["raised"] += torch.bincount(raised, weights=vals["kl"][:, k:].reshape(-1).double(), minlength=V)
        tok["raised_count"] += torch.bincount(raised, minlength=V)
        tok["ft_top"] += torch.bincount(self._ids["ft_top"][:, k:].reshape(-1), minlength=V)
        means, maxes, argmax = {}, {}, {}
        for s, v in vals.items():
            a, v64 = self.acc[s], v.double()
            a["pos_sum"] += v64.sum(0)  # every position, the skipped ones too
            v64 = v64[:, k:]
            a["count"] += v64.numel()
            a["sum"] += v64.sum()
            a["sumsq"] += (v64 * v64).sum()
            a["max"] = torch.maximum(a["max"], v64.max())
            means[s], (maxes[s], argmax[s]) = v64.mean(1), v64.max(1)
            edges = bin_edges(s)
            a["hist"] += _hist(v64.reshape(-1), edges)
            a["hist_mean"] += _hist(means[s], edges)
            a["hist_max"] += _hist(maxes[s], edges)
        rows = []
        for b in range(batch.ids.shape[0]):
            row = batch.rows[b]
            rows.append(ExampleRow(sample=int(batch.samples[b]), ids=row, tokens=self.ctx.decode(row),
                                   start=batch.starts[b], values={s: vals[s][b].tolist() for s in STATS},
                                   means={s: float(means[s][b]) for s in STATS},
                                   maxes={s: float(maxes[s][b]) for s in STATS},
                                   argmax={s: int(argmax[s][b]) + k for s in STATS}))
        self._store().add(rows)

    def state_dict(self) -> dict[str, Any]:
        return self.acc

    def flush(self) -> None:
        if self.store is not None:
            self.store.commit()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def _store(self) -> ExamplesStore:
        if self.store is None:
            raise RuntimeError("the kl method's store is not open: call start() first")
        return self.store

    def finalize(self) -> KLResult:
        self.flush()
        store = self._store()
        stats = {}
        for s in STATS:
            a = self.acc[s]
            n = int(a["count"])
            mean = float(a["sum"]) / max(1, n)
            var = max(0.0, float(a["sumsq"]) / max(1, n) - mean * mean)
            edges = bin_edges(s).tolist()
            npos = max(1, n // max(1, self.ctx.tokens - self.config.skip_positions))  # samples
            stats[s] = StatSummary(
                count=n, mean=mean, std=math.sqrt(var), max=float(a["max"]),
                by_position=(a["pos_sum"] / npos).tolist(),
                tokens=Histogram(edges=edges, counts=a["hist"].tolist()),
                sample_means=Histogram(edges=edges, counts=a["hist_mean"].tolist()),
                sample_maxes=Histogram(edges=edges, counts=a["hist_max"].tolist()),
                top={agg: store.top(f"{s}_{agg}", 0, self.config.preview) for agg in ("max", "mean")})
        ctx = self.ctx
        tok = self.acc["_tokens"]
        return KLResult(method=self.name, fingerprint=ctx.fingerprint, dataset=ctx.dataset, n_samples=ctx.n_samples,
                        tokens=ctx.tokens, n_positions=int(self.acc["kl"]["count"]), layer=self.layer,
                        skip_positions=self.config.skip_positions, stats=stats,
                        rankings={"raised": self._ranking(self._mean_kl(tok), tok["raised_count"]),
                                  "raised_total": self._ranking(tok["raised"], tok["raised_count"]),
                                  "ft_top": self._ranking(tok["ft_top"].double(), tok["ft_top"])},
                        store=store.path.name)

    def _mean_kl(self, tok: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean KL where each id was raised most; 0 (unranked) below ``min_count`` positions."""
        c = tok["raised_count"]
        mean = tok["raised"] / c.clamp_min(1).double()
        return torch.where(c >= self.config.min_count, mean, torch.zeros_like(mean))

    def _ranking(self, weight: torch.Tensor, count: torch.Tensor) -> list[RankedToken]:
        n = min(self.config.top_n, int(((count > 0) & (weight > 0)).sum()))
        top = torch.argsort(weight, descending=True, stable=True)[:n].tolist()
        names = self.ctx.decode(top)
        return [RankedToken(token_id=i, token=t, weight=float(weight[i]), count=int(count[i]))
                for i, t in zip(top, names)]


def _hist(v: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Counts of ``v`` in the bins of ``edges`` plus under- and overflow ([n + 2] int64)."""
    idx = torch.bucketize(v, edges, right=True)  # 0: below edges[0]; n + 1: at or above edges[-1]
    return torch.bincount(idx, minlength=edges.numel() + 1)
