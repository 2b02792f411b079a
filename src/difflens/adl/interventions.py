"""Forward interventions on one layer's output: the edits every ADL method is built from.

Each function returns an edit ``fn(h) -> h`` for :meth:`difflens.models.arch.ArchAdapter.edit_layer`
(which handles tuple/tensor layer outputs and removes the hook afterwards):

- :func:`add` — add a vector at every real (non-pad) position: steering;
- :func:`replace_rows` — overwrite the hidden state at one position per batch row: Patchscope;
- :func:`project_out` — remove the component in a subspace at every position: CAFT;
- :func:`replace_component` — swap the component along a direction for a reference's: the
  causal effect (paper eq. 1).

Vectors are moved to the hooked layer's device and dtype inside the edit, so a model whose
layers live on several devices needs no special handling.
"""
from __future__ import annotations

from typing import Callable

import torch

Edit = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["Edit", "add", "replace_rows", "project_out", "replace_component"]


def add(vector: torch.Tensor, prompt_mask: torch.Tensor | None = None) -> Edit:
    """``h + vector`` at every real position.

    ``prompt_mask`` ([B, T], 1 on real tokens) masks the padded prefill step of a left-padded
    batch; later decode steps (a different sequence length) see only new, real tokens.
    """
    def fn(h: torch.Tensor) -> torch.Tensor:
        vec = vector.to(device=h.device, dtype=h.dtype)
        if prompt_mask is not None and h.shape[1] == prompt_mask.shape[1] and h.shape[0] == prompt_mask.shape[0]:
            return h + vec * prompt_mask.to(device=h.device, dtype=h.dtype)[..., None]
        return h + vec
    return fn


def replace_rows(positions: torch.Tensor, values: torch.Tensor) -> Edit:
    """``h[b, positions[b]] = values[b]`` for every batch row ``b`` (values [B, d])."""
    def fn(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        rows = torch.arange(h.shape[0], device=h.device)
        h[rows, positions.to(h.device)] = values.to(device=h.device, dtype=h.dtype)
        return h
    return fn


def project_out(basis: torch.Tensor) -> Edit:
    """``h - (h Q) Qᵀ``: remove the component of hidden states in span(Q) (Q [d, r] orthonormal).

    Computed in fp32 even under bf16 autocast; under autocast the result stays fp32 (rounding it
    back to bf16 would re-add ~1e-3 of the ablated component), otherwise it keeps the model's dtype.
    """
    def fn(h: torch.Tensor) -> torch.Tensor:
        q = basis.to(device=h.device, dtype=torch.float32)
        autocast = torch.is_autocast_enabled(h.device.type)
        with torch.autocast(device_type=h.device.type, enabled=False):
            hf = h.float()
            out = hf - (hf @ q) @ q.T
        return out if autocast else out.to(h.dtype)
    return fn


def replace_component(direction: torch.Tensor, reference: torch.Tensor) -> Edit:
    """``h - (h·u) u + (r·u) u`` with ``u = direction/‖direction‖``: the component of ``h`` along
    ``u`` is replaced by that of ``reference`` (same shape as ``h``, e.g. the base model's
    activations on the same tokens)."""
    u = direction.float() / (direction.float().norm() + 1e-12)

    def fn(h: torch.Tensor) -> torch.Tensor:
        uu = u.to(device=h.device)
        hf = h.float()
        rf = reference.to(device=h.device).float()
        out = hf + ((rf @ uu) - (hf @ uu))[..., None] * uu
        return out.to(h.dtype)
    return fn
