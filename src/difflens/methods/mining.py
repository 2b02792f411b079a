"""Diff mining: which tokens the finetune makes likelier, counted over many positions.

At every position of N samples × T tokens, the logit difference d = logits_ft − logits_base
(final logits, or both models' logit lens at one layer) is read over the shared vocabulary, and
per vocabulary id three things are counted while streaming: how often the id is among the top K
of d, at how many positions d is positive, and the sum of d (for its mean). Memory is a few
[V]-sized vectors whatever N is: no [N × T × V] tensor is held. Rankings of the top ``top_n`` ids
by each statistic, decoded, are the result; beside them the baseline of one model alone (the
finetuned model's own top-K occurrence, and the base model's) and the bottom-K count (tokens the
finetune makes less likely). Ties rank by the mean difference, then by id.
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional

import numpy as np
import torch
from pydantic import BaseModel, Field, field_validator
from safetensors.torch import save_file

from ..errors import ConfigError
from .base import (DiffMethod, MethodResult, PairBatch, PassContext, check_layer_value, resolve_layer_option,
                   row_chunks)

__all__ = ["MiningConfig", "MiningResult", "DiffMining", "TokenStat", "RANKINGS"]

# ranking name -> the statistic it sorts by (descending)
RANKINGS: dict[str, str] = {
    "top_k": "top_k_count",  # how often in the top K of the difference (the method's main ranking)
    "positive": "positive_fraction",  # fraction of positions where the difference is positive
    "mean_diff": "mean_diff",  # mean difference
    "bottom_k": "bottom_k_count",  # how often in the bottom K (tokens the finetune makes less likely)
    "ft_top_k": "ft_top_k_count",  # baseline: the finetuned model's own top-K occurrence
    "base_top_k": "base_top_k_count",  # baseline: the base model's own top-K occurrence
}


class MiningConfig(BaseModel):
    """Diff-mining options. ``layer`` None reads the final logits; a layer reads both models'
    logit lens there (absolute index or relative depth)."""

    top_k: int = Field(100, ge=1)
    top_n: int = Field(100, ge=1)
    layer: Optional[float | int] = None
    chunk_elements: int = Field(1 << 22, ge=1)

    @field_validator("layer")
    @classmethod
    def _layer(cls, v: Any) -> Any:
        return check_layer_value(v)

    def semantic(self) -> dict[str, Any]:
        return self.model_dump(exclude={"chunk_elements", "top_n"})


class TokenStat(BaseModel):
    """One vocabulary id's statistics over all positions."""

    token_id: int
    token: str
    top_k_count: int
    top_k_fraction: float
    positive_fraction: float
    mean_diff: float
    bottom_k_count: int
    ft_top_k_count: int
    base_top_k_count: int


class MiningResult(MethodResult):
    top_k: int
    layer: Optional[int]  # None: final logits
    vocab_size: int
    rankings: dict[str, list[TokenStat]]  # RANKINGS name -> top_n entries

    def top_tokens(self, ranking: str = "top_k", n: int = 20) -> list[str]:
        return [e.token for e in self.rankings[ranking][:n]]


_COUNTS = ("top_k_count", "positive_count", "bottom_k_count", "ft_top_k_count", "base_top_k_count")


class DiffMining(DiffMethod):
    name: ClassVar[str] = "mining"
    version: ClassVar[int] = 1
    result_type: ClassVar[type[MethodResult]] = MiningResult

    def __init__(self, config: MiningConfig | None = None, **options: Any):
        self.config = config or MiningConfig(**options)

    def precheck(self, vocab_size: int, tokens: int) -> None:
        if self.config.top_k > vocab_size:
            raise ConfigError(f"--top-k {self.config.top_k} is larger than the vocabulary ({vocab_size} tokens); "
                              "use a smaller K.")

    def prepare(self, ctx: PassContext) -> None:
        super().prepare(ctx)
        self.precheck(ctx.vocab_size, ctx.tokens)
        self.layer = None if self.config.layer is None else resolve_layer_option(ctx, self.config.layer, "--lens-layer")

    def fingerprint_inputs(self) -> dict[str, Any]:
        out = super().fingerprint_inputs()
        out["abs_layer"] = self.layer
        return out

    def needs(self) -> set[int]:
        return {self.ctx.num_layers - 1 if self.layer is None else self.layer}

    def start(self, state: dict[str, Any] | None) -> None:
        V = self.ctx.vocab_size
        if state is None:
            self.counts = {k: torch.zeros(V, dtype=torch.int64) for k in _COUNTS}
            self.sum_diff = torch.zeros(V, dtype=torch.float64)
            self.n_positions = 0
        else:
            self.counts = {k: state[k].clone() for k in _COUNTS}
            self.sum_diff = state["sum_diff"].clone()
            self.n_positions = int(state["n_positions"])

    def update(self, batch: PairBatch) -> None:
        K, V = self.config.top_k, self.ctx.vocab_size
        lf = batch.logits("ft", self.layer).reshape(-1, V)
        lb = batch.logits("base", self.layer).reshape(-1, V).to(lf.device)  # a split pair: both on ft's device
        if self.sum_diff.device != lf.device:  # count where the logits are (one transfer per checkpoint)
            self.counts = {k: v.to(lf.device) for k, v in self.counts.items()}
            self.sum_diff = self.sum_diff.to(lf.device)
        c = self.counts
        for s in row_chunks(lf.shape[0], V, self.config.chunk_elements):
            f, b = lf[s], lb[s]
            d = f - b
            c["top_k_count"] += _topk_counts(d, K, V)
            c["bottom_k_count"] += _topk_counts(d, K, V, largest=False)
            c["ft_top_k_count"] += _topk_counts(f, K, V)
            c["base_top_k_count"] += _topk_counts(b, K, V)
            c["positive_count"] += torch.gt(f, b).sum(0, dtype=torch.int32)  # f − b > 0 exactly when f > b
            self.sum_diff += d.sum(0)  # float32 within a chunk of rows, float64 across chunks
        self.n_positions += lf.shape[0]

    def state_dict(self) -> dict[str, Any]:
        return {**{k: v.cpu() for k, v in self.counts.items()}, "sum_diff": self.sum_diff.cpu(),
                "n_positions": self.n_positions}

    def stats(self) -> dict[str, np.ndarray]:
        """Per-vocabulary statistics (arrays of length V)."""
        n = max(1, self.n_positions)
        out = {k: v.cpu().numpy() for k, v in self.counts.items()}
        out["top_k_fraction"] = out["top_k_count"] / n
        out["positive_fraction"] = out["positive_count"] / n
        out["mean_diff"] = self.sum_diff.cpu().numpy() / n
        return out

    def finalize(self) -> MiningResult:
        st = self.stats()
        ids = np.arange(self.ctx.vocab_size)
        rankings: dict[str, list[TokenStat]] = {}
        for name, key in RANKINGS.items():
            order = np.lexsort((ids, -st["mean_diff"], -st[key].astype(np.float64)))[:self.config.top_n]
            toks = self.ctx.decode([int(i) for i in order])
            rankings[name] = [TokenStat(
                token_id=int(i), token=t, top_k_count=int(st["top_k_count"][i]),
                top_k_fraction=float(st["top_k_fraction"][i]), positive_fraction=float(st["positive_fraction"][i]),
                mean_diff=float(st["mean_diff"][i]), bottom_k_count=int(st["bottom_k_count"][i]),
                ft_top_k_count=int(st["ft_top_k_count"][i]), base_top_k_count=int(st["base_top_k_count"][i]))
                for i, t in zip(order, toks)]
        if self.ctx.arrays_path is not None:
            self.ctx.arrays_path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in self.state_dict().items() if isinstance(v, torch.Tensor)},
                      str(self.ctx.arrays_path), metadata={"fingerprint": self.ctx.fingerprint,
                                                           "n_positions": str(self.n_positions)})
        return MiningResult(method=self.name, fingerprint=self.ctx.fingerprint, dataset=self.ctx.dataset,
                            n_samples=self.ctx.n_samples, tokens=self.ctx.tokens, n_positions=self.n_positions,
                            top_k=self.config.top_k, layer=self.layer, vocab_size=self.ctx.vocab_size,
                            rankings=rankings)


def _topk_counts(x: torch.Tensor, k: int, V: int, largest: bool = True) -> torch.Tensor:
    """How often each id is among the top (``largest``) or bottom ``k`` of the rows of ``x`` ([P, V] -> [V] int64)."""
    idx = x.topk(k, dim=-1, largest=largest, sorted=False).indices.reshape(-1)
    return torch.bincount(idx, minlength=V)
