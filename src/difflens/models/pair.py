"""A model pair: a base model and its finetuned copy, validated before any compute.

When the finetuned side is a peft adapter on the same base, the weights are loaded once and
the adapter is toggled (``base()`` disables it), so no second copy is held in memory.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .arch import ArchAdapter, check_model, model_type_of, text_config, unwrap
from ..errors import ConfigError, IncompatiblePairError
from .placement import Placement, align_inputs, input_device, make_placement
from .hostmem import reuse_freed_memory
from .packed import packed_forwards
from .precision import FP32_RESIDUAL, resolve_pair_precision, use_fp32_residual, weight_dtype
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
    shared_vocab(base_tok, ft_tok, base_name, ft_name)


def _id_to_token(tok: Any) -> dict[int, str]:
    return {int(i): t for t, i in tok.get_vocab().items()}


def shared_vocab(base_tok: Any, ft_tok: Any, base_name: str = "base", ft_name: str = "finetuned") -> int:
    """How many leading token ids the two tokenizers share, refusing a real mismatch.

    Accepted: identical maps, and maps where one side only appends tokens (added special tokens)
    after ids both share. Refused: an id below the shared size that decodes to different tokens,
    or a token both have under different ids; the message names the first few.
    """
    bv, fv = base_tok.get_vocab(), ft_tok.get_vocab()
    if bv == fv:
        return len(bv)
    bi, fi = _id_to_token(base_tok), _id_to_token(ft_tok)
    n = min(len(bi), len(fi))
    differ = [i for i in range(n) if bi.get(i) != fi.get(i)]
    moved = sorted((t for t in set(bv) & set(fv) if bv[t] != fv[t]), key=lambda t: bv[t])
    if not differ and not moved:
        return n
    parts = []
    if differ:
        ex = ", ".join(f"id {i}: {bi.get(i)!r} vs {fi.get(i)!r}" for i in differ[:5])
        parts.append(f"{len(differ)} ids decode to different tokens in {base_name} and {ft_name} (e.g. {ex})")
    if moved:
        ex = ", ".join(f"{t!r} {bv[t]} vs {fv[t]}" for t in moved[:5])
        parts.append(f"{len(moved)} tokens with different ids (e.g. {ex})")
    raise IncompatiblePairError(
        f"tokenizer mismatch between {base_name} and {ft_name}: {'; '.join(parts)}. Both models must use "
        "the same token→id map; only tokens appended after the shared ids (added special tokens) and "
        "embedding rows beyond the vocabulary (padding) may differ.")


def embedding_rows(model: Any) -> int:
    """Rows of the unembedding (the logits' size)."""
    from .arch import unwrap

    inner = unwrap(model)
    out = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is not None:
        return int(out.weight.shape[0])
    return int(inner.get_input_embeddings().weight.shape[0])


def pair_vocab_size(base_tok: Any, ft_tok: Any, base_rows: int, ft_rows: int) -> int:
    """How many logits the logit lens and Patchscope read. A matched pair (the same tokenizer, the
    same number of embedding rows) keeps every row, as before; a pair whose embeddings differ by
    padding rows or added tokens is restricted to what both share: the smaller row count, the
    tokenizer's length and the ids both tokenizers agree on."""
    shared = shared_vocab(base_tok, ft_tok)
    if base_rows == ft_rows and base_tok.get_vocab() == ft_tok.get_vocab():
        return base_rows
    return min(shared, len(base_tok), base_rows, ft_rows)


@dataclass
class ModelPair:
    """Base + finetuned model sharing one tokenizer and one architecture.

    With ``shared_adapter`` both sides hold the same peft-wrapped module and ``base()``
    disables the adapter for the duration of the block.
    """

    base_lm: LoadedModel
    ft_lm: LoadedModel
    shared_adapter: bool = False
    precision: str = "float32"  # resolved precision (difflens.models.precision): what the weights compute in

    def __post_init__(self) -> None:
        validate_pair(self.base_lm.model, self.base_lm.tokenizer, self.ft_lm.model, self.ft_lm.tokenizer,
                      self.base_lm.name, self.ft_lm.name)
        self.arch = ArchAdapter(self.base_lm.model)
        self.ft_arch = self.arch if self.shared_adapter else ArchAdapter(self.ft_lm.model)
        self.vocab_size = pair_vocab_size(self.base_lm.tokenizer, self.ft_lm.tokenizer,
                                          embedding_rows(self.base_lm.model), embedding_rows(self.ft_lm.model))
        if not self.shared_adapter and self.input_device("ft") != self.input_device("base"):
            # inputs built on the base model's device must reach the finetuned model's (eval code
            # builds one batch for both): accelerate moves them in and the outputs back
            align_inputs(unwrap(self.ft_lm.model), self.input_device("ft"))

    @property
    def tokenizer(self) -> Any:
        return self.base_lm.tokenizer

    @property
    def device(self) -> torch.device:
        """Where inputs for the base model go (its token embedding's device). With a split pair the
        finetuned model takes them there too (moved in and out by accelerate); code that feeds one
        side only uses :meth:`input_device`."""
        return self.input_device("base")

    def input_device(self, which: str) -> torch.device:
        """Where ``which`` model's input ids go: its token embedding's device."""
        arch = self.arch_of(which)
        return input_device(arch.inner, arch.embedding)

    def logits_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits restricted to the shared vocabulary (padding rows and added tokens dropped)."""
        return logits[..., :self.vocab_size]

    def _base_disables_adapter(self) -> bool:
        """Whether :meth:`base` runs its model with the peft adapter disabled (a shared adapter)."""
        return self.shared_adapter

    @contextlib.contextmanager
    def base(self) -> Iterator[torch.nn.Module]:
        """The base model (adapter disabled when shared)."""
        model = self.base_lm.model
        adapter_off = model.disable_adapter() if self._base_disables_adapter() else contextlib.nullcontext()
        with adapter_off, packed_forwards(model):
            yield model

    @contextlib.contextmanager
    def ft(self) -> Iterator[torch.nn.Module]:
        """The finetuned model (adapter enabled when shared).

        Both sides run their linear layers from oneDNN packs inside a stage where this machine
        multiplies faster with them (:func:`difflens.models.packed.packed_forwards`)."""
        with packed_forwards(self.ft_lm.model):
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
            "precision": self.precision,
            "architecture": self.arch.name,
            "num_layers": self.arch.num_layers,
            "hidden_size": self.arch.hidden_size,
        }


def _same_source(a: ModelSource, b: ModelSource) -> bool:
    return a.kind == b.kind and a.path == b.path


def load_pair(base: str, finetuned: str, *, dtype: torch.dtype | str = torch.float32, device: str = "cpu",
              device_map: Any = None, max_memory: Any = None, base_device: str | None = None,
              ft_device: str | None = None, placement: Placement | None = None, check: bool = True) -> ModelPair:
    """Resolve, validate and load a pair. Adapters of the same base share its weights.

    ``dtype``: a torch dtype or a precision name (:data:`difflens.models.precision.PRECISIONS`,
    ``auto`` resolved per device and model size). Placement: ``device``, ``device_map``,
    ``max_memory`` for both models, ``base_device``/``ft_device`` per model (see
    :mod:`difflens.models.placement`), or a ready :class:`Placement`. Everything is validated
    before any weights are read; once loaded, each side passes :func:`difflens.models.arch.check_model`
    (one 8-token forward: difflens reads its layers and logits as the model computes them) unless
    ``check`` is False.
    """
    reuse_freed_memory()  # large CPU tensors from freed memory, not fresh pages (models.hostmem)
    base_src = resolve_source(base)
    ft_src = resolve_source(finetuned, base=base)
    place = placement or make_placement(device=device, device_map=device_map, max_memory=max_memory,
                                        base_device=base_device, ft_device=ft_device)
    precision = resolve_pair_precision(dtype, place, base_src)
    wdtype = weight_dtype(precision)
    shared = ft_src.kind == "adapter" and ft_src.base is not None and _same_source(ft_src.base, base_src)
    if shared:
        if place.split:
            raise ConfigError(f"{finetuned} is an adapter on {base}: both sides share one set of weights, so "
                              "--base-device and --ft-device cannot differ (use --device or --device-map).")
        ft_lm = load_model(ft_src, dtype=wdtype, **place.ft.load_kwargs())
        base_lm = LoadedModel(ft_lm.model, ft_lm.tokenizer, base_src, fingerprint_source(base_src))
        pair = ModelPair(base_lm, ft_lm, shared_adapter=True)
    else:
        base_lm = load_model(base_src, dtype=wdtype, **place.base.load_kwargs())
        ft_lm = load_model(ft_src, dtype=wdtype, **place.ft.load_kwargs())
        pair = ModelPair(base_lm, ft_lm)
    if precision in FP32_RESIDUAL:
        for which in ("base", "ft"):
            arch = pair.arch_of(which)
            use_fp32_residual(arch.inner, arch.embedding, FP32_RESIDUAL[precision])
    pair.precision = precision
    if check:
        for which, name in (("base", base), ("ft", finetuned)):
            with pair.side(which) as model:
                check_model(model, pair.arch_of(which), name=name)
    return pair


def pair_precision(base: Any, *, dtype: torch.dtype | str = "auto", placement: Placement | None = None,
                   **place_kw: Any) -> str:
    """The precision :func:`load_pair` would load a pair on ``base`` in (``auto`` resolved for the
    placement: ``placement``, or ``place_kw`` as for :func:`load_pair`), without loading it."""
    return resolve_pair_precision(dtype, placement or make_placement(**place_kw), resolve_source(base))


def run_pair_precision(layout: Any, **kw: Any) -> str | None:
    """:func:`pair_precision` of the pair named in a run's manifest (``kw`` as for :func:`pair_from_run`);
    None for a run without a manifest (it names no pair to load)."""
    from ..files import read_json

    if not layout.manifest.exists():
        return None
    return pair_precision(read_json(layout.manifest)["models"]["base"]["spec"], **kw)


def pair_from_run(layout: Any, **kw: Any) -> ModelPair:
    """Reload the model pair named in a run's manifest (``layout``: a
    :class:`~difflens.rundir.layout.RunLayout`); ``kw`` as for :func:`load_pair`."""
    from ..errors import RunDirError
    from ..files import read_json

    if not layout.manifest.exists():
        raise RunDirError(f"{layout.root} has no manifest.json: run `difflens collect ... --out {layout.root}` first.")
    m = read_json(layout.manifest)["models"]
    return load_pair(m["base"]["spec"], m["finetuned"]["spec"], **kw)
