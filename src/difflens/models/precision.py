"""Numeric precision of a model pair: which dtype the weights are held in and how they compute.

``--dtype`` (and the run config's ``dtype``) takes one of :data:`PRECISIONS`:

- ``float32`` / ``bfloat16`` / ``float16``: weights and compute in that dtype (the residual
  stream too);
- ``fp16-fp32res``: the same with float16 weights and matmuls (more mantissa, less range);
- ``bf16-fp32res``: weights in bfloat16 (half the memory), matrix multiplies in bfloat16 under
  autocast, but the residual stream — the hidden state every hook reads and writes — kept in
  float32 (the embedding output is upcast and every residual add then stays float32);
- ``auto`` (the default): :func:`resolve_precision` picks per device and model size — float32
  on a CPU and wherever both models' float32 weights fit in half the accelerator's memory,
  ``fp16-fp32res`` above that (``bf16-fp32res`` for Gemma, whose activations overflow float16).
  docs/precision.md has the measurements behind the rule.

Whatever the compute dtype, means, norms and losses are accumulated in float64 (collection's
running sums, η) or float32 (per-token cross-entropy, then summed in float64).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError

Precision = Literal["auto", "float32", "bfloat16", "float16", "bf16-fp32res", "fp16-fp32res"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16", "bf16-fp32res", "fp16-fp32res")
FP32_RESIDUAL: dict[str, torch.dtype] = {"bf16-fp32res": torch.bfloat16, "fp16-fp32res": torch.float16}

# ``auto`` keeps float32 weights on an accelerator while both models' float32 weights take at most
# this share of its memory (the rest: activations, KV cache of steered generation, the allocator).
FP32_MEMORY_SHARE = 0.5


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype the weights are loaded in (``auto`` must be resolved first)."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
             **FP32_RESIDUAL}
    if precision not in table:
        raise ConfigError(f"unknown dtype '{precision}'; choose one of {', '.join(PRECISIONS)} "
                          "(resolve 'auto' with difflens.models.precision.resolve_precision).")
    return table[precision]


def fingerprint_part(precision: str | None) -> dict[str, str]:
    """What a stage's cache fingerprint adds for the precision its models run in: nothing for
    float32 (None counts as float32), so the fingerprints of float32 runs — the CPU default — stay
    as they were; ``{"precision": name}`` otherwise. A stage rerun in another precision (``--dtype``
    on ``steer``, ``lens`` or ``evaluate``) then computes its results again instead of returning the
    ones another precision computed."""
    name = str(precision or "float32")
    return {} if name == "float32" else {"precision": name}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown dtype '{precision}'; choose one of {', '.join(PRECISIONS)}.")
    return precision


# Families whose sublayer outputs are known to overflow float16's range (±65504): they get bf16.
FP16_UNSAFE_FAMILIES = ("gemma", "gemma2", "gemma3", "gemma3_text")


def resolve_precision(precision: str, *, device_type: str, n_params: int | None,
                      accelerator_bytes: int | None = None, n_models: int = 2, model_type: str | None = None) -> str:
    """The concrete precision for ``auto``; any other value is returned unchanged.

    - CPU (or unknown accelerator memory): ``float32`` — bf16 compute is not faster on most CPUs,
      moves δ̄ by up to 61% at a position (docs/precision.md), and the models that run on a CPU at
      all fit in float32;
    - an accelerator: ``float32`` while ``n_models`` × 4 bytes × ``n_params`` ≤
      :data:`FP32_MEMORY_SHARE` of its memory; above that half-precision weights with a float32
      residual stream: ``fp16-fp32res`` (δ̄ within 1% of float32 in the benchmark), or
      ``bf16-fp32res`` for families whose activations overflow float16 (Gemma).
    """
    check_precision(precision)
    if precision != "auto":
        return precision
    if device_type in ("cpu", "meta") or not n_params or not accelerator_bytes:
        return "float32"
    fp32_bytes = 4 * n_params * n_models
    if fp32_bytes <= FP32_MEMORY_SHARE * accelerator_bytes:
        return "float32"
    return "bf16-fp32res" if model_type in FP16_UNSAFE_FAMILIES else "fp16-fp32res"


def count_parameters(config: Any) -> int:
    """Approximate parameter count of a decoder-only transformer from its (text) config."""
    cfg = getattr(config, "text_config", None) if getattr(config, "hidden_size", None) is None else config
    cfg = cfg or config
    d = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0))
    L = int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0))
    V = int(getattr(cfg, "vocab_size", 0))
    ff = int(getattr(cfg, "intermediate_size", 0) or 4 * d)
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 1) or 1)
    kv = int(getattr(cfg, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(cfg, "head_dim", 0) or d // heads)
    attn = d * head_dim * (2 * heads + 2 * kv)
    mlp = 3 * d * ff
    tied = bool(getattr(config, "tie_word_embeddings", False))
    return L * (attn + mlp) + V * d * (1 if tied else 2)


def accelerator_memory(device: str | torch.device) -> int | None:
    """Total memory in bytes of the accelerator ``device`` (None on a CPU or when unknown)."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(dev.index or 0).total_memory)
    return None


def use_fp32_residual(model: nn.Module, embedding: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
    """Run ``model`` with half-precision (``dtype``) weights and matmuls but a float32 residual stream.

    The embedding's output is upcast to float32, so every residual add (float32 + half-precision
    sublayer output) stays float32, and the model's forward runs under ``dtype`` autocast so that
    the linear layers take the float32 hidden states. Idempotent.
    """
    if getattr(model, "_difflens_fp32_residual", False):
        return

    def upcast(_m: nn.Module, _inp: Any, out: Any) -> Any:
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    embedding.register_forward_hook(upcast)
    device_type = next((p.device.type for p in model.parameters() if p.device.type != "meta"), "cpu")
    inner = model.forward

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=device_type, dtype=dtype):
            return inner(*args, **kwargs)

    model.forward = forward  # type: ignore[method-assign]
    model._difflens_fp32_residual = True  # type: ignore[attr-defined]


def precision_name(dtype: torch.dtype | str) -> str:
    """A precision name for a torch dtype or a name (``torch.bfloat16`` → ``bfloat16``)."""
    if isinstance(dtype, torch.dtype):
        names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
        if dtype not in names:
            raise ConfigError(f"dtype {dtype} is not supported; choose one of {', '.join(PRECISIONS)}.")
        return names[dtype]
    return check_precision(str(dtype))


def source_config(src: Any) -> Any:
    """A model source's config (a namespace), without reading weights; None when unknown."""
    kind = getattr(src, "kind", None)
    if kind == "adapter" and getattr(src, "base", None) is not None:
        return source_config(src.base)
    if kind in ("local", "embedded"):
        path = Path(src.path)
        if kind == "embedded":
            from .sources import embedded_cache_dir

            path = embedded_cache_dir(src.path)
        try:
            raw = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        from types import SimpleNamespace

        def ns(d: dict[str, Any]) -> Any:
            return SimpleNamespace(**{k: ns(v) if isinstance(v, dict) else v for k, v in d.items()})

        return ns(raw)
    if kind == "hub":
        try:
            import transformers

            return transformers.AutoConfig.from_pretrained(src.path)
        except Exception:  # noqa: BLE001 - offline or gated: fall back to the CPU-safe choice
            return None
    return None


def placement_memory(placement: Any) -> tuple[str, int | None]:
    """The device type a placement computes on and the accelerator memory it may use (bytes)."""
    side = placement.base
    kind = side.primary_type
    if kind != "cuda" or not torch.cuda.is_available():
        return kind, None
    if side.device_map is None:
        return kind, accelerator_memory(side.device)
    devices = range(torch.cuda.device_count()) if isinstance(side.device_map, str) else sorted(
        {torch.device(d if not isinstance(d, int) else f"cuda:{d}").index or 0
         for d in side.device_map.values() if isinstance(d, int) or str(d).startswith("cuda")})
    return kind, sum(accelerator_memory(f"cuda:{i}") or 0 for i in devices) or None


def resolve_pair_precision(dtype: torch.dtype | str, placement: Any, base_src: Any) -> str:
    """The concrete precision of a pair (``auto`` resolved by :func:`resolve_precision`)."""
    name = precision_name(dtype)
    if name != "auto":
        return name
    kind, mem = placement_memory(placement)
    cfg = source_config(base_src) if mem else None
    n_params = count_parameters(cfg) if cfg is not None else None
    return resolve_precision("auto", device_type=kind, n_params=n_params, accelerator_bytes=mem,
                             model_type=getattr(cfg, "model_type", None))
