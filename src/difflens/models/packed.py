"""Prepacked weights for a CPU model's linear layers: MKL's or oneDNN's, whichever this machine runs faster.

A decode step multiplies a few dozen to a few hundred rows by every weight of the model. At that
size MKL's ``sgemm`` spends much of its time re-packing the weight (copying its panels into the
layout its kernel reads) on every call: for a SmolLM2-135M decode step (the 210 layer matmuls and
the unembedding, weights larger than the cache), 95.8 ms at 64 rows against 75.7 ms from weights
packed once, 292 against 235 ms at 250 rows (2 Xeon cores, float32, the weights cycled as in a
step); a whole steered call of 64 rows × 64 tokens 8 % faster, 220 rows × 128 tokens 12 %.

And MKL is not the fastest float32 GEMM on every CPU. On 2 AMD EPYC (Zen 5, AVX-512) cores
PyTorch's ``F.linear`` (MKL ``sgemm``) multiplies at 140–190 GFLOP/s whatever the size, while
oneDNN's packed linear (``torch.ops.mkldnn._linear_pointwise``, the kernel PyTorch's inductor uses
for frozen CPU linears) reaches 400–450 GFLOP/s on the same products (64–2,048 rows × 576 →
1,536): MKL picks its slower code paths on a CPU that is not Intel's.

:class:`PackedLinears` packs each ``nn.Linear`` of a CPU float32 model and runs the layer from the
packed weight inside a ``with`` block. Two backends (:func:`choose_backend` picks the faster on this
machine once per process; ``DIFFLENS_PACKED=mkl|onednn`` forces one, ``0`` turns packing off):

- ``mkl``: packed for a given number of rows (:meth:`PackedLinears.pack`,
  ``torch.ops.mkl._mkl_reorder_linear_weight``); inputs of another row count take the module's own
  ``F.linear``, so only the decode loop's steps use it, repacked when rows leave the batch. Products
  equal ``F.linear``'s for most shapes and row counts; where MKL's unpacked call takes another path
  (fewer than 16 rows, some shapes at some row counts) they differ by float rounding (a few 1e-7
  relative). Rows below :data:`MIN_ROWS` are never packed.
- ``onednn``: packed once on entering the block (``torch.ops.mkldnn._reorder_linear_weight``, about
  0.2 s for SmolLM2-135M's 211 weights on 2 cores) for inputs of any shape: the prefill and the
  decode steps, a grader's or a collect's forwards. Float32 throughout (not a lower-precision
  mode); products differ from MKL's by float rounding (their error against a float64 product is of
  the same order, a few 1e-6 over 576 terms). Inside :func:`keep_packs` the packs outlive the block:
  the next block over the same, unchanged weights (same storage, same version counter) reuses them.

The packed copy costs as much memory as the weights, so packing is skipped when they are larger
than a share of the free memory (:data:`MEMORY_SHARE`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.nn.functional as F

__all__ = ["MIN_ROWS", "MEMORY_SHARE", "BACKENDS", "available", "backend_rates", "choose_backend", "keep_packs",
           "stage_store", "with_kept_packs", "packed_forwards", "is_packed_forward", "PackedLinears"]

MIN_ROWS = 16
"""Fewer rows than this run unpacked on the ``mkl`` backend: there the step is bound by reading the
weights, and MKL's unpacked call takes other paths (a matrix-vector product at one row) than the
packed one."""

MEMORY_SHARE = 0.25
"""Pack only when the packed copy fits in this share of the machine's available memory."""

BACKENDS = ("mkl", "onednn")

PREFER_ONEDNN = 1.15
"""``auto`` takes oneDNN only when it multiplies at least this much faster than MKL's packed
``sgemm`` (MKL is the backend measured on Intel machines before oneDNN was added)."""


def available(backend: str = "mkl") -> bool:
    """Whether this PyTorch build has ``backend``'s packed linear (``mkl``: CPU builds with MKL;
    ``onednn``: builds with oneDNN, formerly MKL-DNN)."""
    try:
        if backend == "mkl":
            return bool(torch.backends.mkl.is_available()) and hasattr(torch.ops.mkl, "_mkl_linear") \
                and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")
        if backend == "onednn":
            return bool(torch.backends.mkldnn.is_available()) \
                and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
                and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    except (AttributeError, RuntimeError):
        return False
    raise ValueError(f"unknown packed-linear backend {backend!r}: use one of {', '.join(BACKENDS)}")


_RATES: dict[str, float] = {}


def backend_rates(rows: int = 64, d_in: int = 1024, d_out: int = 2048) -> dict[str, float]:
    """FLOP/s of each available backend's packed linear, ``rows`` × ``d_in`` → ``d_out`` (the size of
    a decode step's layers), on this machine's CPU threads; measured once per process (about 0.1 s)
    for :func:`choose_backend`. (``difflens.run.cost.matmul_rate``, the floors' rate, times oneDNN
    on its own square product.)"""
    if _RATES:
        return dict(_RATES)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d_in, generator=g)
    w = torch.randn(d_out, d_in, generator=g) * d_in ** -0.5
    work = 2.0 * rows * d_in * d_out
    with torch.no_grad():
        calls = {}
        if available("mkl"):
            pw = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
            calls["mkl"] = lambda: torch.ops.mkl._mkl_linear(x, pw, w, None, rows)
        if available("onednn"):
            try:
                dw = torch.ops.mkldnn._reorder_linear_weight(w, None)
                calls["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(x, dw, None, "none", [], "")
                calls["onednn"]()
            except RuntimeError:  # a build that has the op but not for this CPU
                calls.pop("onednn", None)
        for name, call in calls.items():
            call()
            best = float("inf")
            for _ in range(5):  # the best of 5 rounds of 4 calls: a busy moment does not decide the backend
                t0 = time.perf_counter()
                for _ in range(4):
                    call()
                best = min(best, (time.perf_counter() - t0) / 4)
            _RATES[name] = work / best
    return dict(_RATES)


def choose_backend() -> str | None:
    """The packed-linear backend to use: ``DIFFLENS_PACKED`` (``0``: none; ``mkl`` or ``onednn``: that
    one, where available), else the faster on this machine (:func:`backend_rates`; oneDNN only when
    :data:`PREFER_ONEDNN` × faster than MKL)."""
    want = os.environ.get("DIFFLENS_PACKED", "auto").strip().lower()
    if want == "0":
        return None
    if want in BACKENDS:
        return want if available(want) else None
    rates = backend_rates()
    if "onednn" in rates and rates["onednn"] >= PREFER_ONEDNN * rates.get("mkl", 0.0):
        return "onednn"
    return "mkl" if "mkl" in rates else None


def _free_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# oneDNN packs kept across blocks inside keep_packs(): id(weight) -> (weight, data_ptr, version, pack)
_KEPT: dict[int, tuple[torch.Tensor, int, int, torch.Tensor]] | None = None


# what a stage keeps for its duration besides the packs (decode_step.py's fused projections), keyed by its
# owner; freed with the packs on leaving the outermost keep_packs block
_STAGE: dict[str, Any] | None = None


def stage_store() -> dict[str, Any] | None:
    """A dict that lives as long as the outermost :func:`keep_packs` block (None outside one): for
    derived copies of a stage's frozen weights that should be made once per stage, and freed with it."""
    return _STAGE


@contextlib.contextmanager
def keep_packs() -> Iterator[None]:
    """Inside this block, oneDNN packs outlive the :class:`PackedLinears` block that made them: a
    later block over the same weights reuses them while a weight keeps its storage and version
    counter (an in-place update such as ``copy_`` or an optimiser step makes a new pack; a write
    through ``.data`` bypasses the version counter and is not seen, so nothing inside may write
    weights that way). A stage that runs many short calls over frozen
    weights (the steer stage's grader waves and generation rounds) packs each weight once. The packs
    are freed on leaving the outermost block."""
    global _KEPT, _STAGE
    if _KEPT is not None:  # nested: the outer block keeps them
        yield
        return
    _KEPT, _STAGE = {}, {}
    try:
        yield
    finally:
        _KEPT = _STAGE = None


F_ = TypeVar("F_", bound=Callable[..., Any])


def with_kept_packs(fn: F_) -> F_:
    """``fn`` runs inside :func:`keep_packs` (a stage's entry point: collect, lens, steer, the methods
    pass, evaluate)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with keep_packs():
            return fn(*args, **kwargs)
    return run  # type: ignore[return-value]


@contextlib.contextmanager
def packed_forwards(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model``'s forwards inside the block from oneDNN packs (:class:`PackedLinears`), where oneDNN
    is this machine's backend and the block is inside :func:`keep_packs` (so that a stage's many
    short blocks pack each weight once); otherwise nothing changes. MKL's packs serve one row count
    each: only the decode loop uses them. :class:`difflens.models.pair.ModelPair` runs every side
    through this."""
    if _KEPT is None or choose_backend() != "onednn":
        yield model
        return
    with PackedLinears(model, backend="onednn"):
        yield model


def is_packed_forward(module: torch.nn.Module) -> bool:
    """Whether ``module``'s forward is replaced, and by a :class:`PackedLinears` block (the same product
    from a packed weight), not by anything else."""
    return bool(getattr(module.__dict__.get("forward"), "difflens_packed", False))


def _onednn_reorder(weight: torch.Tensor, rows: int | None) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def _kept(weight: torch.Tensor) -> torch.Tensor | None:
    """The pack kept for ``weight`` (inside :func:`keep_packs`, while it is unchanged), else None."""
    hit = _KEPT.get(id(weight)) if _KEPT is not None else None
    if hit is not None and hit[0] is weight and hit[1] == weight.data_ptr() and hit[2] == weight._version:
        return hit[3]
    return None


def _onednn_pack(weight: torch.Tensor) -> torch.Tensor:
    w = weight.detach()
    pack = _kept(weight)
    if pack is not None:
        return pack
    pack = _onednn_reorder(w, None)
    if _KEPT is not None:
        _KEPT[id(weight)] = (weight, w.data_ptr(), weight._version, pack)
    return pack


class PackedLinears:
    """The ``nn.Linear`` modules of ``model`` run from packed weights inside a ``with`` block.

    ``backend`` (default :func:`choose_backend`): ``mkl`` packs for one row count at a time
    (:meth:`pack`; the decode loop calls it each step); ``onednn`` packs once on entering, for every
    input. Does nothing (every layer unpacked) where no backend is available, the model is not wholly
    on the CPU in float32, the weights would not fit (:data:`MEMORY_SHARE`), or
    ``DIFFLENS_PACKED=0`` is set. A call with autograd on, or another dtype, takes ``F.linear``."""

    def __init__(self, model: torch.nn.Module, *, enabled: bool | None = None, backend: str | None = None) -> None:
        self.layers: list[torch.nn.Linear] = []
        self.rows: int | None = None
        self.packed_calls = 0  # layer calls that ran packed (tests and benches read it)
        self._packs: dict[int, torch.Tensor] = {}
        if enabled is None:
            enabled = os.environ.get("DIFFLENS_PACKED", "auto").strip() != "0"
        self.backend = (backend or choose_backend()) if enabled else None
        if self.backend is not None and not available(self.backend):
            self.backend = None
        if self.backend is None:
            return
        params = list(model.parameters())
        if not params or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
            return
        # a module whose forward is already replaced (accelerate's hooks do that) is left alone
        layers = [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in m.__dict__
                  and m.weight.dim() == 2 and m.weight.shape[0] > 0 and m.weight.shape[1] > 0]
        # the packs still to make (inside keep_packs, those already kept cost no more memory)
        need = sum(m.weight.numel() * 4 for m in layers
                   if not (self.backend == "onednn" and _kept(m.weight) is not None))
        free = _free_bytes()
        if free is not None and need > MEMORY_SHARE * free:
            return
        self.layers = layers

    @property
    def active(self) -> bool:
        return bool(self.layers)

    def pack(self, rows: int) -> None:
        """``mkl``: pack every layer for inputs of ``rows`` rows (fewer than :data:`MIN_ROWS`: none
        packed). ``onednn``: the packs made on entering serve every row count (nothing to do)."""
        if not self.layers or rows == self.rows or self.backend != "mkl":
            return
        self._packs = {}  # the old packs go before the new ones are made (their memory is reused)
        self.rows = rows
        if rows >= MIN_ROWS:
            reorder = torch.ops.mkl._mkl_reorder_linear_weight
            with torch.no_grad():
                self._packs = {id(m): reorder(m.weight.detach(), rows) for m in self.layers}

    def _forward(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        pack = self._packs.get(id(module)) if self._packs else None
        if pack is not None and x.dtype == torch.float32 and not torch.is_grad_enabled() and x.dim() >= 1 \
                and x.numel():
            if self.backend == "onednn":
                self.packed_calls += 1
                return torch.ops.mkldnn._linear_pointwise(x, pack, module.bias, "none", [], "")
            rows = self.rows
            if x.dim() >= 2 and x.numel() == rows * x.shape[-1]:
                self.packed_calls += 1
                return torch.ops.mkl._mkl_linear(x, pack, module.weight, module.bias, rows)
        return F.linear(x, module.weight, module.bias)

    def __enter__(self) -> "PackedLinears":
        if self.layers and self.backend == "onednn":
            with torch.no_grad():
                self._packs = {id(m): _onednn_pack(m.weight) for m in self.layers}
        for m in self.layers:
            # a function, not a partial: deepcopy of a module inside the block shares it instead of copying the packs
            def fwd(x: torch.Tensor, m: torch.nn.Linear = m) -> torch.Tensor:
                return self._forward(m, x)
            fwd.difflens_packed = True  # type: ignore[attr-defined]  # is_packed_forward
            m.forward = fwd  # instance attribute: hooks still run
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in self.layers:
            m.__dict__.pop("forward", None)
        self._packs = {}
        self.rows = None
