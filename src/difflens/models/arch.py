"""Architecture specifics: the only module that knows where a model keeps its internals.

Every other module reaches decoder layers, the final norm, the unembedding, the embedding,
the BOS policy and a layer's output format through :class:`ArchAdapter`. One adapter per
model family (Llama, Mistral, Qwen2, Qwen3, Gemma2, Gemma3 text, GPT-2).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Family:
    """Where one model family keeps its modules (attribute paths from the CausalLM)."""

    name: str
    layers: tuple[str, ...]
    final_norm: tuple[str, ...]
    embed: tuple[str, ...]
    unembed: str = "lm_head"
    uses_bos: bool = False  # the model was trained with a BOS token at position 0
    scaled_embedding: bool = False  # embeddings are multiplied by sqrt(d) (inside the embed module)


_DECODER = dict(layers=("model.layers", "model.language_model.layers"),
                final_norm=("model.norm", "model.language_model.norm"),
                embed=("model.embed_tokens", "model.language_model.embed_tokens"))

FAMILIES: dict[str, Family] = {
    "llama": Family("llama", **_DECODER),
    "mistral": Family("mistral", **_DECODER),
    "qwen2": Family("qwen2", **_DECODER),
    "qwen3": Family("qwen3", **_DECODER),
    "gemma2": Family("gemma2", uses_bos=True, scaled_embedding=True, **_DECODER),
    "gemma3": Family("gemma3", uses_bos=True, scaled_embedding=True, **_DECODER),
    "gemma3_text": Family("gemma3_text", uses_bos=True, scaled_embedding=True, **_DECODER),
    "gpt2": Family("gpt2", layers=("transformer.h",), final_norm=("transformer.ln_f",),
                   embed=("transformer.wte",)),
}


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the deepest needed layer has run."""


def _getattr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers CausalLM of a (possibly peft-wrapped) model."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        return get_base()
    return model


def model_type_of(config: Any) -> str:
    text_cfg = getattr(config, "text_config", None)
    mt = getattr(config, "model_type", None)
    if mt == "gemma3" and text_cfg is not None:
        return "gemma3"
    return str(mt)


def text_config(config: Any) -> Any:
    """The config holding hidden_size / num_hidden_layers (the text config for multimodal ones)."""
    if getattr(config, "hidden_size", None) is None and getattr(config, "text_config", None) is not None:
        return config.text_config
    return config


class ArchAdapter:
    """Read and write a causal LM's internals in a family-independent way."""

    def __init__(self, model: nn.Module):
        self.model = model
        inner = unwrap(model)
        self.inner = inner
        mt = model_type_of(inner.config)
        if mt not in FAMILIES:
            raise UnsupportedArchitectureError(
                f"model_type '{mt}' is not supported. Supported families: "
                f"{', '.join(sorted(FAMILIES))}. Add a Family entry in difflens/models/arch.py to support it."
            )
        self.family = FAMILIES[mt]
        self._layers = self._resolve(self.family.layers, "decoder layers")
        self._norm = self._resolve(self.family.final_norm, "final norm")
        self._embed = self._resolve(self.family.embed, "token embedding")
        self._unembed = getattr(inner, self.family.unembed, None)
        if self._unembed is None:
            raise UnsupportedArchitectureError(f"{mt}: no '{self.family.unembed}' unembedding found")
        cfg = text_config(inner.config)
        self.config = cfg
        self.softcap: float | None = getattr(cfg, "final_logit_softcapping", None) or None
        self.embed_scale: float = float(cfg.hidden_size) ** 0.5 if self.family.scaled_embedding else 1.0

    def _resolve(self, paths: Sequence[str], what: str) -> Any:
        for p in paths:
            try:
                return _getattr_path(self.inner, p)
            except AttributeError:
                continue
        raise UnsupportedArchitectureError(
            f"{self.family.name}: could not find the {what} (tried {', '.join(paths)}); "
            "the checkpoint layout differs from what difflens/models/arch.py expects."
        )

    # -- structure ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.family.name

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def layers(self) -> nn.ModuleList:
        return self._layers

    @property
    def final_norm(self) -> nn.Module:
        return self._norm

    @property
    def embedding(self) -> nn.Module:
        return self._embed

    @property
    def uses_bos(self) -> bool:
        return self.family.uses_bos

    @property
    def input_device(self) -> torch.device:
        """Where input ids go: the token embedding's device (a dispatched model's ``model.device``
        is only that of its first parameter)."""
        from .placement import input_device

        return input_device(self.inner, self._embed)

    def resolve_layer(self, layer: float | int | str) -> int:
        """Absolute layer index from an absolute int or a relative depth in [0, 1].

        A float (or a string containing '.') is relative: ``floor(r * L)``, clamped to L-1.
        Layer ``i`` means *the output of decoder layer i* (0-based).
        """
        L = self.num_layers
        if isinstance(layer, str):
            layer = float(layer) if "." in layer else int(layer)
        if isinstance(layer, float):
            if not 0.0 <= layer <= 1.0:
                raise ValueError(f"relative layer {layer} must lie in [0, 1]")
            return min(L - 1, int(layer * L))
        idx = int(layer)
        if idx < 0:
            idx += L
        if not 0 <= idx < L:
            raise ValueError(f"layer {layer} out of range for a {L}-layer model")
        return idx

    # -- reading/writing a layer's output --------------------------------------------------
    @staticmethod
    def output_tensor(output: Any) -> torch.Tensor:
        """The hidden-state tensor of a decoder layer's output (tuple or tensor)."""
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            return output[0]
        raise TypeError(f"unrecognised decoder-layer output of type {type(output).__name__}")

    @staticmethod
    def replace_output(output: Any, hidden: torch.Tensor) -> Any:
        """A decoder-layer output of the same structure with its hidden states replaced."""
        if isinstance(output, torch.Tensor):
            return hidden
        if isinstance(output, tuple):
            return (hidden,) + tuple(output[1:])
        if isinstance(output, list):
            return [hidden] + list(output[1:])
        raise TypeError(f"unrecognised decoder-layer output of type {type(output).__name__}")

    @contextlib.contextmanager
    def edit_layer(self, layer: int, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
        """Within the block, layer ``layer``'s output hidden states are passed through ``fn``.

        ``fn`` returns a replacement tensor, or None to leave the output unchanged (a read).
        """
        def hook(_module: nn.Module, _inp: Any, output: Any) -> Any:
            new = fn(self.output_tensor(output))
            if new is None:
                return None
            return self.replace_output(output, new)

        handle = self._layers[layer].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def capture(self, model: nn.Module, input_ids: torch.Tensor, layers: Sequence[int],
                attention_mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """Outputs of the given decoder layers, stopping the forward after the deepest one."""
        wanted = sorted(set(int(x) for x in layers))
        deepest = wanted[-1]
        out: dict[int, torch.Tensor] = {}
        with contextlib.ExitStack() as stack:
            for li in wanted:
                def read(h: torch.Tensor, li: int = li) -> None:
                    out[li] = h.detach()
                    if li == deepest:
                        raise StopForward
                stack.enter_context(self.edit_layer(li, read))
            dev = self.input_device
            mask = attention_mask.to(dev) if attention_mask is not None else None
            try:
                with torch.no_grad():
                    model(input_ids=input_ids.to(dev), attention_mask=mask, use_cache=False)
            except StopForward:
                pass
        return out

    # -- logits ----------------------------------------------------------------------------
    def unembed(self, hidden: torch.Tensor, *, apply_norm: bool = True) -> torch.Tensor:
        """Logits of hidden vectors through final norm (optional), unembedding and softcapping.

        The final norm and the unembedding may live on different devices (a dispatched model):
        the vector goes to each one's device in turn; the logits stay on the unembedding's."""
        from .placement import module_device

        w = self._unembed.weight
        h = hidden.to(w.dtype)
        if apply_norm:
            h = self._norm(h.to(module_device(self._norm, h.device)))
        logits = self._unembed(h.to(module_device(self._unembed, h.device))).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings as the model's first layer sees them (Gemma scale included)."""
        return self._embed(input_ids)


# LoRA: the linear layers an adapter trains, per module-naming convention (attention + MLP).
LORA_MODULE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),  # Llama/Mistral/Qwen/Gemma
    ("c_attn", "c_proj", "c_fc"),  # GPT-2 style
)


def lora_targets(model: nn.Module) -> tuple[list[str], bool]:
    """Module names a LoRA adapter should target, and peft's ``fan_in_fan_out`` flag.

    GPT-2 keeps its projections in transformers' ``Conv1D`` (weights stored transposed), which
    peft handles with ``fan_in_fan_out=True``.
    """
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for group in LORA_MODULE_GROUPS:
        hit = [g for g in group if g in names]
        if hit:
            return hit, False
    linear = sorted(names - {"lm_head"})
    if linear:
        return linear, False
    from transformers.pytorch_utils import Conv1D

    return sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, Conv1D)}), True
