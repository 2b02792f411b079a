"""A model pair: a base model and its finetuned copy, validated before any compute.

When the finetuned side is a peft adapter on the same base, the weights are loaded once and
the adapter is toggled (``base()`` disables it), so no second copy is held in memory.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .arch import ArchAdapter, model_type_of, text_config
from ..errors import IncompatiblePairError
from .sources import LoadedModel, ModelSource, fingerprint_source, load_model, resolve_source


def validate_pair(base_model: Any, base_tok: Any, ft_model: Any, ft_tok: Any,
                  base_name: str = "base", ft_name: str = "finetuned") -> None:
    """Refuse pairs that cannot be compared; the message names the mismatch."""
    from .arch import unwrap

    bc, fc = unwrap(base_model).config, unwrap(ft_model).config
    bt, ft = model_type_of(bc), model_type_of(fc)
    if bt != ft:
        raise IncompatiblePairError(
            f"architecture mismatch: {base_name} is '{bt}' but {ft_name} is '{ft}'. "
            "A finetuned model must share its base model's architecture.")
    btc, ftc = text_config(bc), text_config(fc)
    if btc.hidden_size != ftc.hidden_size:
        raise IncompatiblePairError(
            f"hidden size mismatch: {base_name} has d={btc.hidden_size}, {ft_name} has d={ftc.hidden_size}.")
    if btc.num_hidden_layers != ftc.num_hidden_layers:
        raise IncompatiblePairError(
            f"layer count mismatch: {base_name} has {btc.num_hidden_layers} layers, "
            f"{ft_name} has {ftc.num_hidden_layers}.")
    bv, fv = base_tok.get_vocab(), ft_tok.get_vocab()
    if bv != fv:
        only_b = sorted(set(bv) - set(fv))[:5]
        only_f = sorted(set(fv) - set(bv))[:5]
        moved = sorted(t for t in set(bv) & set(fv) if bv[t] != fv[t])[:5]
        detail = "; ".join(x for x in [
            f"{len(set(bv) - set(fv))} tokens only in {base_name} (e.g. {only_b})" if only_b else "",
            f"{len(set(fv) - set(bv))} tokens only in {ft_name} (e.g. {only_f})" if only_f else "",
            f"tokens with different ids (e.g. {moved})" if moved else ""] if x)
        raise IncompatiblePairError(
            f"tokenizer mismatch between {base_name} and {ft_name}: {detail}. "
            "Both models must use the identical token→id map.")


@dataclass
class ModelPair:
    """Base + finetuned model sharing one tokenizer and one architecture.

    With ``shared_adapter`` both sides hold the same peft-wrapped module and ``base()``
    disables the adapter for the duration of the block.
    """

    base_lm: LoadedModel
    ft_lm: LoadedModel
    shared_adapter: bool = False

    def __post_init__(self) -> None:
        validate_pair(self.base_lm.model, self.base_lm.tokenizer, self.ft_lm.model, self.ft_lm.tokenizer,
                      self.base_lm.name, self.ft_lm.name)
        self.arch = ArchAdapter(self.base_lm.model)
        self.ft_arch = self.arch if self.shared_adapter else ArchAdapter(self.ft_lm.model)

    @property
    def tokenizer(self) -> Any:
        return self.base_lm.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.base_lm.model.parameters()).device

    @contextlib.contextmanager
    def base(self) -> Iterator[torch.nn.Module]:
        """The base model (adapter disabled when shared)."""
        if self.shared_adapter:
            with self.base_lm.model.disable_adapter():
                yield self.base_lm.model
        else:
            yield self.base_lm.model

    @contextlib.contextmanager
    def ft(self) -> Iterator[torch.nn.Module]:
        """The finetuned model (adapter enabled when shared)."""
        yield self.ft_lm.model

    def side(self, which: str) -> contextlib.AbstractContextManager[torch.nn.Module]:
        if which not in ("base", "ft"):
            raise ValueError(f"side must be 'base' or 'ft', not {which!r}")
        return self.base() if which == "base" else self.ft()

    def arch_of(self, which: str) -> ArchAdapter:
        return self.arch if which == "base" else self.ft_arch

    def describe(self) -> dict[str, Any]:
        return {
            "base": {"spec": self.base_lm.source.spec, "source": self.base_lm.source.describe(),
                     "fingerprint": self.base_lm.fingerprint},
            "finetuned": {"spec": self.ft_lm.source.spec, "source": self.ft_lm.source.describe(),
                          "fingerprint": self.ft_lm.fingerprint},
            "shared_adapter": self.shared_adapter,
            "architecture": self.arch.name,
            "num_layers": self.arch.num_layers,
            "hidden_size": self.arch.hidden_size,
        }


def _same_source(a: ModelSource, b: ModelSource) -> bool:
    return a.kind == b.kind and a.path == b.path


def load_pair(base: str, finetuned: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
              device_map: Any = None) -> ModelPair:
    """Resolve, validate and load a pair. Adapters of the same base share its weights."""
    base_src = resolve_source(base)
    ft_src = resolve_source(finetuned, base=base)
    if ft_src.kind == "adapter" and ft_src.base is not None and _same_source(ft_src.base, base_src):
        ft_lm = load_model(ft_src, dtype=dtype, device=device, device_map=device_map)
        base_lm = LoadedModel(ft_lm.model, ft_lm.tokenizer, base_src, fingerprint_source(base_src))
        return ModelPair(base_lm, ft_lm, shared_adapter=True)
    base_lm = load_model(base_src, dtype=dtype, device=device, device_map=device_map)
    ft_lm = load_model(ft_src, dtype=dtype, device=device, device_map=device_map)
    return ModelPair(base_lm, ft_lm)
