"""MKL-prepacked weights for the CPU decode loop (:func:`difflens.models.decoding.sample_rows`).

A decode step multiplies a few dozen to a few hundred rows by every weight of the model. At that
size MKL's ``sgemm`` spends much of its time re-packing the weight (copying its panels into the
layout its kernel reads) on every call: for a SmolLM2-135M decode step (the 210 layer matmuls and
the unembedding, weights larger than the cache), 95.8 ms at 64 rows against 75.7 ms from weights
packed once, 292 against 235 ms at 250 rows (2 Xeon cores, float32, the weights cycled as in a
step); a whole steered call of 64 rows × 64 tokens 8 % faster, 220 rows × 128 tokens 12 %.

:class:`PackedLinears` packs each ``nn.Linear`` of a CPU float32 model once for a given number of
rows (``torch.ops.mkl._mkl_reorder_linear_weight``, the packing PyTorch's own inductor uses for
frozen CPU linears) and runs the layer with ``torch.ops.mkl._mkl_linear`` while the input has
exactly that many rows; any other input (a prefill, a batch of another size) takes the module's
own ``F.linear``. The packed copy costs as much memory as the weights, so the packing is skipped
when they are larger than a share of the free memory (:data:`MEMORY_SHARE`).

Results: the same GEMM kernels, so the products equal ``F.linear``'s for most shapes and row
counts; where MKL's unpacked call takes another path (fewer than 16 rows, some shapes at some row
counts) they differ by float rounding (a few 1e-7 relative). Rows below :data:`MIN_ROWS` are never
packed.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["MIN_ROWS", "MEMORY_SHARE", "available", "PackedLinears"]

MIN_ROWS = 16
"""Fewer rows than this run unpacked: there the step is bound by reading the weights, and MKL's
unpacked call takes other paths (a matrix-vector product at one row) than the packed one."""

MEMORY_SHARE = 0.25
"""Pack only when the packed copy fits in this share of the machine's available memory."""


def available() -> bool:
    """Whether this PyTorch build has MKL's packed linear (CPU builds with MKL)."""
    try:
        return bool(torch.backends.mkl.is_available()) and hasattr(torch.ops.mkl, "_mkl_linear") \
            and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")
    except (AttributeError, RuntimeError):
        return False


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


class PackedLinears:
    """The ``nn.Linear`` modules of ``model`` run from weights packed for ``rows`` rows (:meth:`pack`)
    inside a ``with`` block. Does nothing (every layer unpacked) where MKL's packed linear is not
    available, the model is not wholly on the CPU in float32, the weights would not fit
    (:data:`MEMORY_SHARE`), or ``DIFFLENS_PACKED=0`` is set."""

    def __init__(self, model: torch.nn.Module, *, enabled: bool | None = None) -> None:
        self.layers: list[torch.nn.Linear] = []
        self.rows: int | None = None
        self.packed_calls = 0  # layer calls that ran packed (tests and benches read it)
        self._packs: dict[int, torch.Tensor] = {}
        if enabled is None:
            enabled = os.environ.get("DIFFLENS_PACKED", "1") != "0"
        if not enabled or not available():
            return
        params = list(model.parameters())
        if not params or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
            return
        # a module whose forward is already replaced (accelerate's hooks do that) is left alone
        layers = [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in m.__dict__
                  and m.weight.dim() == 2 and m.weight.shape[0] > 0 and m.weight.shape[1] > 0]
        need = sum(m.weight.numel() * 4 for m in layers)
        free = _free_bytes()
        if free is not None and need > MEMORY_SHARE * free:
            return
        self.layers = layers

    @property
    def active(self) -> bool:
        return bool(self.layers)

    def pack(self, rows: int) -> None:
        """Pack every layer for inputs of ``rows`` rows (fewer than :data:`MIN_ROWS`: none packed)."""
        if not self.layers or rows == self.rows:
            return
        self._packs = {}  # the old packs go before the new ones are made (their memory is reused)
        self.rows = rows
        if rows >= MIN_ROWS:
            reorder = torch.ops.mkl._mkl_reorder_linear_weight
            with torch.no_grad():
                self._packs = {id(m): reorder(m.weight.detach(), rows) for m in self.layers}

    def _forward(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        rows = self.rows
        if self._packs and x.dim() >= 2 and x.numel() == rows * x.shape[-1] and x.dtype == torch.float32 \
                and not torch.is_grad_enabled():
            self.packed_calls += 1
            return torch.ops.mkl._mkl_linear(x, self._packs[id(module)], module.weight, module.bias, rows)
        return F.linear(x, module.weight, module.bias)

    def __enter__(self) -> "PackedLinears":
        for m in self.layers:
            m.forward = lambda x, m=m: self._forward(m, x)  # instance attribute: hooks still run
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in self.layers:
            m.__dict__.pop("forward", None)
        self._packs = {}
        self.rows = None
