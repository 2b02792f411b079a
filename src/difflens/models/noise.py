"""A noise control pair: the base model against a copy of itself with small random weight noise.

What a diffing method shows when the pair carries no narrow finetune: :func:`noise_pair` turns a
loaded :class:`~difflens.models.pair.ModelPair` (base, finetuned) into (base, base + noise), the
noised copy on the base model's devices and in its dtype (one extra copy of the base weights).

How large the noise is (``scale``):

- ``"matched"`` (the default, for a full finetune whose parameters have the base's names and
  shapes): per tensor, Gaussian noise rescaled to exactly the Frobenius norm of that tensor's
  finetuning change ‖W_ft − W_base‖: the same amount of change per tensor, but with no direction in
  it. A tensor shared by several modules (tied embeddings) is noised once.
- a float σ ≥ 0: per tensor, σ · rms(W) · ε with ε ~ N(0, 1), so ‖noise‖ ≈ σ ‖W‖.

An adapter pair (or a pair whose parameters differ in name or shape) has no per-tensor change to
match: ``"matched"`` then falls back to σ = :data:`FALLBACK_SIGMA` and the pair's
:attr:`NoisePair.control` says so (``fallback``). The noise is deterministic given ``seed``: each
tensor draws from its own ``torch.Generator`` seeded with the seed and the tensor's name, on the CPU,
so the weights do not depend on the device, the order of the parameters or earlier draws.

The noised side is described as ``noise:<base spec>``; its fingerprint hashes the base model's
fingerprint, the scale, the seed and, for a matched scale, the finetuned model's fingerprint (whose
change norms it copies).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from .arch import unwrap
from .pair import ModelPair
from .precision import FP32_RESIDUAL, use_fp32_residual
from .sources import LoadedModel, ModelSource

__all__ = ["noise_pair", "NoisePair", "parse_noise_scale", "FALLBACK_SIGMA", "NOISE_VERSION"]

# σ used where a matched scale is impossible (adapters): about the relative weight change of the
# embedded full-finetune organisms (cake_bake on SmolLM2-135M: ‖ΔW‖/‖W‖ = 0.52 % over all tensors,
# median 0.38 % per tensor)
FALLBACK_SIGMA = 0.005
NOISE_VERSION = 1  # bump when the noise a (scale, seed) gives changes


@dataclass
class NoisePair(ModelPair):
    """(base, base + noise). ``control`` describes the noise; with ``adapter_base`` the base side
    is a peft-wrapped model whose adapter is disabled while it runs (the base of an adapter pair)."""

    control: dict[str, Any] = field(default_factory=dict)
    adapter_base: bool = False

    def _base_disables_adapter(self) -> bool:
        return self.adapter_base

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "control": dict(self.control)}


def parse_noise_scale(value: str | float) -> str | float:
    """``"matched"`` or a finite float ≥ 0 (a ConfigError naming ``--control-scale`` otherwise)."""
    if isinstance(value, str):
        if value.strip().lower() == "matched":
            return "matched"
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"--control-scale: '{value}' is neither 'matched' nor a number like 0.005.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"--control-scale: the noise scale σ must be a finite number ≥ 0 (got {value!r}).")
    return float(value)


def _tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _gaussian(shape: torch.Size, seed: int, name: str) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(_tensor_seed(seed, name))
    return torch.randn(shape, generator=g, dtype=torch.float32)


def _strip_fp32_residual(model: torch.nn.Module) -> None:
    """Undo what :func:`use_fp32_residual` left on a deep copy: its forward wrapper closes over the
    original module's forward (the copy would run the original weights), so it is removed with the
    embedding's upcast hook; :func:`noise_pair` applies both again to the copy."""
    for m in model.modules():
        if m.__dict__.get("_difflens_fp32_residual", False):
            m.__dict__.pop("forward", None)
            del m._difflens_fp32_residual
        for key, hook in list(m._forward_hooks.items()):
            if getattr(hook, "__qualname__", "").startswith(use_fp32_residual.__name__ + "."):
                del m._forward_hooks[key]  # added again, with the wrapper, by use_fp32_residual


def _change_norms(base: torch.nn.Module, ft: torch.nn.Module) -> dict[str, float] | None:
    """‖W_ft − W_base‖ per parameter of ``base`` (shared tensors once), or None when the two models'
    parameters differ in name or shape."""
    ft_params = dict(ft.named_parameters(remove_duplicate=False))
    out: dict[str, float] = {}
    for name, p in base.named_parameters():
        q = ft_params.get(name)
        if q is None or q.shape != p.shape:
            return None
        out[name] = float((q.detach().to(p.device, torch.float32) - p.detach().float()).norm())
    return out


def _describe_scale(scale: str | float) -> str:
    return "matched" if scale == "matched" else f"{float(scale):g}"


def noise_pair(pair: ModelPair, *, scale: str | float = "matched", seed: int = 0, warn: Any = None) -> NoisePair:
    """The pair (base, base + noise) of ``pair``'s base model (see the module docstring).

    ``warn`` (a callable taking one string; default: print to stderr) is told when a matched scale
    falls back to :data:`FALLBACK_SIGMA`.
    """
    scale = parse_noise_scale(scale)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"--control-seed: an integer, please (got {seed!r}).")
    adapter = pair.shared_adapter or pair.ft_lm.source.kind == "adapter"
    sigma: float | None = None if scale == "matched" else float(scale)
    norms: dict[str, float] | None = None
    fallback = None
    # the base weights, copied (an adapter pair's shared module: copied, its adapter layers removed)
    src_model = pair.base_lm.model
    noised = copy.deepcopy(src_model)
    if pair.shared_adapter:
        noised = noised.unload()  # the base model with the LoRA layers replaced by the original ones
    _strip_fp32_residual(noised)
    inner = unwrap(noised)
    if scale == "matched":
        if adapter:
            fallback = "an adapter pair has no per-tensor change to match"
        else:
            norms = _change_norms(unwrap(pair.base_lm.model), unwrap(pair.ft_lm.model))
            if norms is None:
                fallback = "the finetuned model's parameters differ from the base's in name or shape"
        if fallback is not None:
            sigma = FALLBACK_SIGMA
            (warn or _stderr)(f"noise control: {fallback}; using σ = {FALLBACK_SIGMA:g} × rms(W) per tensor "
                              "instead of a matched scale")
    total_noise = total_w = 0.0
    with torch.no_grad():
        for name, p in inner.named_parameters():  # each shared tensor once
            eps = _gaussian(p.shape, seed, name)
            w = p.detach().float()  # (p itself for float32 weights: its norm is read before p changes)
            w_norm = float(w.norm())
            if norms is not None:
                en = float(eps.norm())
                eps = eps * (norms[name] / en) if en > 0 else eps.zero_()
            else:
                eps = eps * (sigma * w_norm / math.sqrt(max(1, p.numel())))  # type: ignore[operator]  # σ·rms(W)
            noise = eps.to(p.device)
            total_noise += float(noise.norm()) ** 2
            total_w += w_norm ** 2
            p.copy_((w + noise).to(p.dtype))
    base_fp = pair.base_lm.fingerprint
    control: dict[str, Any] = {
        "name": "noise", "version": NOISE_VERSION, "scale": _describe_scale(scale), "seed": seed,
        "sigma": sigma, "fallback": fallback, "base": base_fp,
        "matched_to": ({"spec": pair.ft_lm.source.spec, "fingerprint": pair.ft_lm.fingerprint}
                       if norms is not None else None),
        "relative_norm": math.sqrt(total_noise / total_w) if total_w > 0 else 0.0,  # ‖noise‖ / ‖W‖, all tensors
    }
    ident = {k: control[k] for k in ("name", "version", "scale", "seed", "sigma", "base", "matched_to")}
    fp = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    base_src = pair.base_lm.source
    src = ModelSource("noise", f"noise:{base_src.spec}", base_src.path, base=base_src,
                      extra={k: control[k] for k in ("scale", "seed", "sigma")})
    ft_lm = LoadedModel(noised, pair.base_lm.tokenizer, src, fp)
    out = NoisePair(pair.base_lm, ft_lm, shared_adapter=False, precision=pair.precision, control=control,
                    adapter_base=pair.shared_adapter)
    if pair.precision in FP32_RESIDUAL:
        arch = out.arch_of("ft")
        use_fp32_residual(arch.inner, arch.embedding, FP32_RESIDUAL[pair.precision])
    return out


def _stderr(msg: str) -> None:
    import sys

    print(f"warning: {msg}", file=sys.stderr, flush=True)
