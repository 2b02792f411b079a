"""Architecture specifics: the only module that knows where a model keeps its internals.

Every other module reaches decoder layers, the final norm, the unembedding, the embedding,
the BOS policy and a layer's output format through :class:`ArchAdapter`.

Where things are is **discovered** from the config and the module tree, for any transformers
causal LM (dense or mixture-of-experts): the decoder layers are the ``nn.ModuleList`` with
``config.num_hidden_layers`` entries under ``model.get_decoder()``; the final norm is the
norm module beside them (the one applied after the layers); the embedding and unembedding are
``get_input_embeddings()`` / ``get_output_embeddings()``. Scalings the model applies outside
those modules are read from the config (Granite's ``embedding_multiplier`` / ``logits_scaling``,
Cohere's ``logit_scale``, Gemma's ``final_logit_softcapping``). :data:`FAMILIES` keeps what
cannot be read from a model: the BOS policy, and explicit module paths where discovery would
guess wrong. A model whose layout cannot be found is refused, naming what is missing
(:class:`~difflens.errors.UnsupportedArchitectureError`); :func:`check_model` verifies the
result numerically on one tiny forward at load time (``load_pair``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Family:
    """What difflens knows about one model family beyond what discovery finds.

    Module paths (from the CausalLM) are overrides: None means discovered (the default, and enough
    for every tested family); ``final_norm=""`` means the family has no final norm (its layer
    outputs are read by the unembedding as they are).
    """

    name: str
    uses_bos: bool = False  # the model was trained with a BOS token at position 0
    layers: str | None = None
    final_norm: str | None = None
    embed: str | None = None
    unembed: str | None = None
    note: str = ""  # the family's quirks, for people (the behaviour is read from model and config)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama"), Family("mistral"), Family("qwen2"), Family("qwen3"),
    Family("mixtral", note="MoE: hooks sit on the decoder-layer output, never inside the experts"),
    Family("qwen3_moe", note="MoE"),
    Family("gpt_oss", note="MoE with attention sinks"),
    Family("gemma", uses_bos=True, note="embeddings scaled by sqrt(d) inside the embedding module"),
    Family("gemma2", uses_bos=True, note="sqrt(d) embedding scale; final_logit_softcapping; tied embeddings"),
    Family("gemma3", uses_bos=True, note="multimodal wrapper: the text decoder is get_decoder()"),
    Family("gemma3_text", uses_bos=True, note="sqrt(d) embedding scale; final_logit_softcapping; tied"),
    Family("phi3"), Family("olmo2", note="post-norm blocks (norm after attention/MLP)"),
    Family("gpt_neox", note="gpt_neox.layers, gpt_neox.final_layer_norm, embed_out/lm_head"),
    Family("falcon", note="transformer.h / transformer.ln_f; layers return tuples; tied embeddings"),
    Family("cohere", note="LayerNorm final norm; logits multiplied by config.logit_scale; tied"),
    Family("granite", note="embeddings times config.embedding_multiplier; logits divided by logits_scaling"),
    Family("starcoder2", note="LayerNorm with bias; tied embeddings"),
    Family("gpt2", note="transformer.h / transformer.ln_f; learned positions; tied embeddings"),
)}

# Families the test suite proves on tiny random-init models (tests/models/test_families.py).
TESTED_FAMILIES: tuple[str, ...] = (
    "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3_text", "phi3", "olmo2",
    "gpt_neox", "falcon", "cohere", "granite", "starcoder2", "gpt2", "gpt_oss")


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


def attention_heads(config: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of a (text) config; 0s where it names no heads."""
    heads = int(getattr(config, "num_attention_heads", None) or 0)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    width = int(getattr(config, "hidden_size", None) or 0)
    return heads, kv, int(getattr(config, "head_dim", None) or (width // heads if heads else 0))


# -- discovery ---------------------------------------------------------------------------------
_NORM_TYPES: tuple[type, ...] = tuple(t for t in (nn.LayerNorm, getattr(nn, "RMSNorm", None), nn.GroupNorm) if t)
# preferred names when several norm modules sit beside the layers after them
_FINAL_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "final_norm", "norm_f", "ln_out")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def _decoder_root(inner: nn.Module) -> nn.Module:
    """The text decoder (``get_decoder()``: ``model``, ``transformer``, ``gpt_neox``, a multimodal
    model's ``language_model``), or the model itself."""
    get = getattr(inner, "get_decoder", None)
    if callable(get):
        try:
            root = get()
        except Exception:  # noqa: BLE001 - transformers raises for models without a decoder rule
            root = None
        if isinstance(root, nn.Module):
            return root
    base = getattr(inner, "base_model", None)
    return base if isinstance(base, nn.Module) else inner


@dataclass
class Layout:
    """Where a model keeps its internals (module paths from the CausalLM), and what was missing."""

    layers: str | None = None
    final_norm: str | None = None  # "" = none
    embed: str | None = None
    unembed: str | None = None
    missing: list[str] = field(default_factory=list)


def discover(inner: nn.Module, family: Family | None = None) -> Layout:
    """Find decoder layers, final norm, embedding and unembedding of a CausalLM (see the module
    docstring); ``missing`` names, with the reason, each part that could not be found."""
    names = {id(m): n for n, m in inner.named_modules()}
    cfg = text_config(inner.config)
    out = Layout()
    fam = family or Family("?")

    def path_of(m: nn.Module | None) -> str | None:
        return names.get(id(m)) if m is not None else None

    def explicit(path: str | None, what: str) -> str | None:
        if path is None:
            return None
        if path == "":
            return ""
        try:
            _getattr_path(inner, path)
        except AttributeError:
            out.missing.append(f"the {what} at '{path}' (the path in the family table)")
            return None
        return path

    # decoder layers: the shallowest ModuleList with num_hidden_layers entries under the decoder
    L = getattr(cfg, "num_hidden_layers", None)
    if fam.layers is not None:
        out.layers = explicit(fam.layers, "decoder layers")
    elif not isinstance(L, int):
        out.missing.append("the decoder layers (the config has no integer num_hidden_layers)")
    else:
        root = _decoder_root(inner)
        lists = []
        for scope in (root, inner):
            lists = [(n, m) for n, m in scope.named_modules() if isinstance(m, nn.ModuleList) and len(m) == L]
            if lists:
                break
        if lists:
            depth = min(n.count(".") for n, _ in lists)
            top = [m for n, m in lists if n.count(".") == depth]
            if len(top) == 1:
                out.layers = path_of(top[0])
            else:
                out.missing.append("the decoder layers (several ModuleLists of config.num_hidden_layers="
                                   f"{L} entries: {', '.join(str(path_of(m)) for m in top)})")
        else:
            seen = [f"{n} ({len(m)})" for n, m in inner.named_modules() if isinstance(m, nn.ModuleList)]
            out.missing.append(f"the decoder layers (no nn.ModuleList of config.num_hidden_layers={L} entries; "
                               f"ModuleLists present: {', '.join(seen) or 'none'})")

    # final norm: the norm module beside the layers, applied after them
    if fam.final_norm is not None:
        out.final_norm = explicit(fam.final_norm, "final norm")
    elif out.layers:
        parent_path, _, attr = out.layers.rpartition(".")
        parent = _getattr_path(inner, parent_path) if parent_path else inner
        kids = list(parent.named_children())
        after = False
        cands: list[tuple[str, bool]] = []
        for n, m in kids:
            if n == attr:
                after = True
                continue
            if _is_norm(m) and not any(w in n.lower() for w in ("emb", "input", "pre")):
                cands.append((n, after))
        pick: list[str] = [n for n, _ in cands]
        if len(pick) > 1:
            pick = [n for n, a in cands if a] or pick
        if len(pick) > 1:
            named = [n for n in _FINAL_NORM_NAMES if n in pick]
            pick = named[:1] if named else pick
        if len(pick) == 1:
            out.final_norm = f"{parent_path}.{pick[0]}" if parent_path else pick[0]
        elif not pick:
            out.missing.append(f"the final norm (no norm module beside the decoder layers in "
                               f"'{parent_path or type(inner).__name__}': children are "
                               f"{', '.join(f'{n} ({type(m).__name__})' for n, m in kids)})")
        else:
            out.missing.append(f"the final norm (several norm modules after the decoder layers: {', '.join(pick)})")

    # embedding and unembedding
    if fam.embed is not None:
        out.embed = explicit(fam.embed, "token embedding")
    else:
        emb = _call(inner, "get_input_embeddings")
        out.embed = path_of(emb) if isinstance(emb, nn.Module) else None
        if out.embed is None:
            out.missing.append("the token embedding (get_input_embeddings() returned no module of the model)")
    if fam.unembed is not None:
        out.unembed = explicit(fam.unembed, "unembedding")
    else:
        une = _call(inner, "get_output_embeddings")
        ok = isinstance(une, nn.Module) and isinstance(getattr(une, "weight", None), torch.Tensor)
        out.unembed = path_of(une) if ok else None
        if out.unembed is None:
            out.missing.append("the unembedding (get_output_embeddings() returned no module with a weight)")
    return out


def _call(obj: Any, name: str) -> Any:
    fn = getattr(obj, name, None)
    if not callable(fn):
        return None
    try:
        return fn()
    except Exception:  # noqa: BLE001 - NotImplementedError and friends: treated as absent
        return None


def _scalar(module: nn.Module, *names: str) -> float | None:
    for n in names:
        v = getattr(module, n, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            return float(v.detach().float().cpu())
    return None


class ArchAdapter:
    """Read and write a causal LM's internals in a family-independent way."""

    def __init__(self, model: nn.Module):
        self.model = model
        inner = unwrap(model)
        self.inner = inner
        config = getattr(inner, "config", None)
        if config is None:
            raise UnsupportedArchitectureError(
                f"{type(inner).__name__} has no config; difflens reads transformers causal LMs.")
        mt = model_type_of(config)
        self.model_type = mt
        self.family = FAMILIES.get(mt) or Family(mt)
        self.known = mt in FAMILIES
        layout = discover(inner, self.family)
        if layout.missing:
            raise UnsupportedArchitectureError(
                f"model_type '{mt}' ({type(inner).__name__}) has a layout difflens cannot read: could not find "
                + "; ".join(layout.missing)
                + ". Give its module paths in a Family entry in difflens/models/arch.py (README: "
                "'Model families').")
        self.layout = layout
        self._layers = _getattr_path(inner, layout.layers)
        self._norm = _getattr_path(inner, layout.final_norm) if layout.final_norm else None
        self._embed = _getattr_path(inner, layout.embed)
        self._unembed = _getattr_path(inner, layout.unembed)
        cfg = text_config(config)
        self.config = cfg
        # what the model does outside the modules found: read from the config
        self.softcap: float | None = _scalar(cfg, "final_logit_softcapping") or None
        scale = 1.0
        if _scalar(cfg, "logits_scaling"):  # Granite: logits / logits_scaling
            scale /= _scalar(cfg, "logits_scaling")  # type: ignore[operator]
        if _scalar(cfg, "logit_scale"):  # Cohere: logits * logit_scale
            scale *= _scalar(cfg, "logit_scale")  # type: ignore[operator]
        self.logit_scale: float = scale
        # embeddings: a scale inside the embedding module (Gemma) and one applied after it (Granite)
        self.embed_multiplier: float = _scalar(cfg, "embedding_multiplier") or 1.0
        self.embed_scale: float = (_scalar(self._embed, "scalar_embed_scale", "embed_scale") or 1.0) \
            * self.embed_multiplier

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
        """The norm applied after the last decoder layer (an identity for a family without one)."""
        return self._norm if self._norm is not None else nn.Identity()

    @property
    def embedding(self) -> nn.Module:
        return self._embed

    @property
    def uses_bos(self) -> bool:
        return self.family.uses_bos

    @property
    def tied_embeddings(self) -> bool:
        """Whether the unembedding shares the token embedding's weight."""
        return self._unembed.weight is getattr(self._embed, "weight", None)

    def describe(self) -> dict[str, Any]:
        """Where this model's internals were found and the quirks applied (for messages and tests)."""
        return {"model_type": self.model_type, "family": self.family.name, "known_family": self.known,
                "layers": self.layout.layers, "num_layers": self.num_layers, "final_norm": self.layout.final_norm,
                "embed": self.layout.embed, "unembed": self.layout.unembed, "tied": self.tied_embeddings,
                "uses_bos": self.uses_bos, "embed_scale": self.embed_scale, "logit_scale": self.logit_scale,
                "softcap": self.softcap}

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
            self._tensor_output = isinstance(output, torch.Tensor)  # how restart_after shapes its outputs
            new = fn(self.output_tensor(output))
            if new is None:
                return None
            return self.replace_output(output, new)

        handle = self._layers[layer].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def restart_after(self, layer: int, hidden: torch.Tensor) -> Iterator[None]:
        """Within the block a forward starts after decoder layer ``layer``: layers ``0..layer-1``
        pass their input through untouched and layer ``layer`` returns ``hidden`` ([B, T, d], its
        output as cached from an earlier forward on the same tokens, possibly edited) without
        computing anything. The input ids still go in (masks and positions come from them; the
        embedding lookup is all that runs below ``layer + 1``). Forward hooks on these layers fire
        as usual (on the passed-through / given tensors)."""
        tensor_out = getattr(self, "_tensor_output", True)

        def shaped(h: torch.Tensor) -> Any:
            return h if tensor_out else (h,)

        def skip(hidden_states: torch.Tensor, *_a: Any, **_k: Any) -> Any:
            return shaped(hidden_states)

        def given(*_a: Any, **_k: Any) -> Any:
            return shaped(hidden)

        patched = [(self._layers[i], skip if i < layer else given) for i in range(layer + 1)]
        try:
            for module, fn in patched:
                module.forward = fn  # an instance attribute shadows the class's forward
            yield
        finally:
            for module, _ in patched:
                module.__dict__.pop("forward", None)

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
        """Logits of hidden vectors through final norm (optional), unembedding, the config's logit
        scaling (Granite, Cohere) and softcapping (Gemma) — what the model does after its last layer.

        The final norm and the unembedding may live on different devices (a dispatched model):
        the vector goes to each one's device in turn; the logits stay on the unembedding's."""
        from .placement import module_device

        w = self._unembed.weight
        h = hidden.to(w.dtype)
        if apply_norm and self._norm is not None:
            h = self._norm(h.to(module_device(self._norm, h.device)))
        logits = self._unembed(h.to(module_device(self._unembed, h.device))).float()
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings scaled as the model scales them (Gemma's sqrt(d) inside the module,
        Granite's ``embedding_multiplier`` after it); learned position embeddings (GPT-2) are not
        added."""
        e = self._embed(input_ids)
        return e * self.embed_multiplier if self.embed_multiplier != 1.0 else e

    def check(self, model: nn.Module | None = None, *, name: str = "model", tol: float | None = None) -> "ArchCheck":
        """:func:`check_model` on this adapter (``model``: the module to run, e.g. a peft wrapper)."""
        return check_model(self.model if model is None else model, self, name=name, tol=tol)


@dataclass
class ArchCheck:
    """The numbers of :func:`check_model`: relative max-abs differences (÷ the reference's max-abs)."""

    name: str
    layer_diffs: dict[int, float]  # capture at layer ℓ vs output_hidden_states[ℓ + 1]
    logits_diff: float  # unembed(last layer output) vs the model's logits
    tol: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().float().cpu(), ref.detach().float().cpu()
    if got.shape != ref.shape:
        return float("inf")
    d = (got - ref).abs().max()
    return float(d / ref.abs().max().clamp_min(1e-6)) if torch.isfinite(d) else float("inf")


def check_model(model: nn.Module, arch: ArchAdapter | None = None, *, name: str = "model",
                tol: float | None = None, input_ids: torch.Tensor | None = None, raise_on_fail: bool = True
                ) -> ArchCheck:
    """Verify on one tiny forward that difflens reads ``model`` the way the model computes.

    Two checks, on a short input (8 tokens): the capture hook on every decoder layer but the last
    returns the model's own ``output_hidden_states`` there, and the logit lens of the last layer
    (:meth:`ArchAdapter.unembed` with the final norm) returns the model's logits. Differences are
    relative (max |a - b| / max |b|); ``tol`` defaults to 1e-3 for float32 weights and 5e-2 for
    half precision. A model that fails is refused (:class:`UnsupportedArchitectureError`) with the
    numbers, unless ``raise_on_fail`` is False.
    """
    arch = arch or ArchAdapter(model)
    w = arch._unembed.weight
    if tol is None:
        tol = 1e-3 if w.dtype in (torch.float32, torch.float64) else 5e-2
    L = arch.num_layers
    if input_ids is None:
        vocab = int(min(arch._unembed.weight.shape[0], getattr(arch._embed, "num_embeddings", 1 << 30),
                        getattr(arch.config, "vocab_size", None) or 1 << 30))
        input_ids = torch.tensor([[(17 + 31 * i) % vocab for i in range(8)]])
    got: dict[int, torch.Tensor] = {}
    problems: list[str] = []
    with contextlib.ExitStack() as stack:
        for li in range(L):
            def read(h: torch.Tensor, li: int = li) -> None:
                got[li] = h.detach()
            stack.enter_context(arch.edit_layer(li, read))
        with torch.no_grad():
            out = model(input_ids=input_ids.to(arch.input_device), output_hidden_states=True, use_cache=False)
    hs = getattr(out, "hidden_states", None)
    logits = getattr(out, "logits", None)
    diffs: dict[int, float] = {}
    if len(got) != L:
        problems.append(f"the hooks on {arch.layout.layers} ran on {len(got)} of {L} layers")
    if hs is None or len(hs) != L + 1:
        problems.append(f"output_hidden_states gave {'nothing' if hs is None else len(hs)} entries, expected "
                        f"{L + 1} for the {L} decoder layers at {arch.layout.layers}")
    else:
        for li in range(L - 1):  # the last entry is after the final norm: checked through the logits
            if li in got:
                diffs[li] = _rel(got[li], hs[li + 1])
        bad = {li: d for li, d in diffs.items() if not d <= tol}
        if bad:
            problems.append("the capture at layer ℓ differs from output_hidden_states[ℓ + 1]: "
                            + ", ".join(f"layer {li}: {d:.3g}" for li, d in bad.items()))
    ldiff = float("nan")
    if logits is None:
        problems.append("the model returned no logits")
    elif L - 1 in got:
        ldiff = _rel(arch.unembed(got[L - 1]), logits)
        if not ldiff <= tol:
            problems.append(f"the logit lens of the last layer (final norm {arch.layout.final_norm or 'none'}, "
                            f"unembedding {arch.layout.unembed}, logit scale {arch.logit_scale:g}, softcap "
                            f"{arch.softcap}) differs from the model's logits by {ldiff:.3g}")
    res = ArchCheck(name, diffs, ldiff, tol, problems)
    if problems and raise_on_fail:
        raise UnsupportedArchitectureError(
            f"{name} ({arch.model_type}, {type(arch.inner).__name__}) failed difflens's load-time check "
            f"(relative differences, tolerance {tol:g}): {'; '.join(problems)}. difflens would read this model "
            "wrongly; give the family's module paths or quirks in difflens/models/arch.py (README: 'Model "
            "families').")
    return res


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
