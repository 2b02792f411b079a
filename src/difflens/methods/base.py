"""What a diffing method is: a unit that reads one shared pass of base and finetuned model over data.

A method (:class:`DiffMethod`) never runs a model itself. The driver
(:func:`difflens.methods.driver.run_methods`) samples the data once, runs base and finetuned over
each batch once, and hands every requested method the same :class:`PairBatch`; a method updates
running statistics whose size does not depend on the number of samples, can be checkpointed
(:meth:`DiffMethod.state_dict`) and resumed, and at the end turns them into a typed result
(:class:`MethodResult`, a pydantic model written as JSON where :class:`~difflens.rundir.layout.RunLayout`
says). The life of a method in one pass::

    m.precheck(vocab, T)    # options against the tokenizers' vocabulary and T: before any model loads
    m.prepare(ctx)          # resolve layers, validate options against the pair: before any forward
    m.fingerprint_inputs()  # what besides pair and data identifies its result (after prepare)
    m.outputs_present()     # a finished result is reused when its fingerprint matches and this holds
    m.can_resume(n_done)    # a checkpoint is continued when every method can
    m.needs()               # the absolute layers whose hidden states it reads
    m.start(state or None)  # fresh statistics, or those of a checkpoint
    m.update(batch) ...     # once per batch, in sample order
    m.flush()               # before each checkpoint (commit what it streams to disk)
    m.state_dict()          # the running statistics, for the checkpoint
    m.finalize()            # -> MethodResult (the driver writes it)
    m.close()               # always, also when the pass fails

The fingerprint of a method's result is the pair, the sampled data, the pass options and
:meth:`DiffMethod.fingerprint_inputs` (its semantic options and :attr:`DiffMethod.version`):
a result whose fingerprint matches is reused, anything else recomputes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel

from ..errors import ConfigError

__all__ = ["DiffMethod", "MethodResult", "PairBatch", "PassContext", "resolve_layer_option"]


class MethodResult(BaseModel):
    """The common head of every method's result."""

    method: str
    fingerprint: str
    dataset: str
    n_samples: int
    tokens: int  # T: positions read per sample
    n_positions: int  # positions the statistics count: N × T (less any a method skips)
    models: dict[str, Any] = {}  # the pair (ModelPair.describe()), set by the driver
    seconds: float = 0.0  # wall time of the pass that computed it (all its methods together)
    control: str | None = None  # None: the run's pair; else the control pair it was computed on (e.g. "noise")


@dataclass
class PassContext:
    """What a method may know about the pass it is part of (given to :meth:`DiffMethod.prepare`)."""

    dataset: str
    tokens: int
    n_samples: int
    vocab_size: int  # logits a method reads: the pair's shared vocabulary
    num_layers: int
    resolve_layer: Callable[[float | int | str], int]
    decode: Callable[[list[int]], list[str]]  # token ids -> one string per id
    fingerprint: str = ""  # of this method's result (set by the driver once all inputs are known)
    store_path: Path | None = None  # where the method may keep an SQLite store (the run layout's path)
    arrays_path: Path | None = None  # where the method may write its full arrays


@dataclass
class PairBatch:
    """One batch of the shared pass: B samples, T positions each.

    ``ids[b, t]`` is the token at position t of sample ``samples[b]`` (positions count from the
    sample's start: a text's first token, or a chat reply's first token); ``hidden[side][layer]`` is
    ``[B, T, d]``, the output of decoder layer ``layer`` at those positions. Logits are computed on
    first use from the hidden states (final norm and unembedding of the model, through
    :meth:`difflens.models.arch.ArchAdapter.unembed`), restricted to the shared vocabulary, and
    cached for the other methods of the pass: the final logits are the logit lens of the last layer.
    """

    samples: torch.Tensor  # [B] sample indices (0..N-1, in sampling order)
    ids: torch.Tensor  # [B, T]
    rows: list[list[int]]  # the full token rows fed to the models (context + window), for display
    starts: list[int]  # where each row's window starts
    hidden: dict[str, dict[int, torch.Tensor]]
    unembed: dict[str, Callable[[torch.Tensor], torch.Tensor]]
    vocab_size: int
    num_layers: int
    _logits: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def logits(self, side: str, layer: int | None = None) -> torch.Tensor:
        """``[B, T, V]`` float32 logits of ``side`` at ``layer`` (None: the model's final logits)."""
        li = self.num_layers - 1 if layer is None else layer
        key = (side, li)
        if key not in self._logits:
            if li not in self.hidden[side]:
                raise KeyError(f"layer {li} was not captured for {side}; list it in the method's needs()")
            self._logits[key] = self.unembed[side](self.hidden[side][li])[..., :self.vocab_size].float()
        return self._logits[key]


class DiffMethod(ABC):
    """A diffing method: streaming statistics over a shared pass (see the module docstring)."""

    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump when the computation changes: earlier results then recompute
    result_type: ClassVar[type[MethodResult]] = MethodResult

    config: BaseModel

    def precheck(self, vocab_size: int, tokens: int) -> None:
        """Check options against the tokenizers' vocabulary and the positions per sample before any
        model is loaded (a :class:`~difflens.errors.ConfigError` for one that cannot be honoured)."""

    def prepare(self, ctx: PassContext) -> None:
        """Resolve options against the pair and data; raise :class:`~difflens.errors.ConfigError`
        for an option the pair cannot honour. Called before any forward pass."""
        self.ctx = ctx

    @abstractmethod
    def needs(self) -> set[int]:
        """Absolute layers whose hidden states :meth:`update` reads (the last layer for final logits)."""

    def fingerprint_inputs(self) -> dict[str, Any]:
        """What, besides pair and data, changes this method's result."""
        semantic = getattr(self.config, "semantic", None)
        return {"version": self.version, "config": semantic() if callable(semantic) else self.config.model_dump()}

    def outputs_present(self) -> bool:
        """Whether what the method keeps beside its result (a store, arrays) is there: a finished
        result without it is recomputed."""
        return True

    def can_resume(self, n_done: int) -> bool:
        """Whether a checkpoint after ``n_done`` samples can be continued (what the method streams to
        disk is there and complete); if any method says no, the pass starts over."""
        return True

    @abstractmethod
    def start(self, state: dict[str, Any] | None) -> None:
        """Fresh running statistics (``state`` None) or those of a checkpoint."""

    @abstractmethod
    def update(self, batch: PairBatch) -> None:
        """Add one batch to the running statistics."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The running statistics (tensors and plain values; their size must not grow with N)."""

    def flush(self) -> None:
        """Persist what the method streams to disk (called before each checkpoint and at the end)."""

    @abstractmethod
    def finalize(self) -> MethodResult:
        """The typed result of the finished pass."""

    def close(self) -> None:
        """Release files (called when the pass ends, also on failure; unflushed work is discarded)."""


def resolve_layer_option(ctx: PassContext, value: float | int | str, option: str) -> int:
    """An absolute layer from a layer option, or a ConfigError that names the option."""
    try:
        return ctx.resolve_layer(value)
    except ValueError as e:
        raise ConfigError(f"{option}: {e}.") from e


def check_layer_value(v: float | int | None) -> float | int | None:
    """A layer option: an absolute index (int) or a relative depth (float) in [0, 1]."""
    if isinstance(v, float) and not 0.0 <= v <= 1.0:
        raise ValueError(f"a relative layer lies in [0, 1], got {v}")
    return v


def row_chunks(n_rows: int, width: int, budget: int = 1 << 22) -> list[slice]:
    """Slices over ``n_rows`` rows of ``width`` elements, each holding about ``budget`` elements
    (temporaries of vocabulary-wide computations stay bounded whatever the batch size)."""
    step = max(1, budget // max(1, width))
    return [slice(i, min(n_rows, i + step)) for i in range(0, n_rows, step)]
