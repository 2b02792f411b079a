"""A decode step of a Llama-family decoder without transformers' forward: the steering loop's steps.

In a decode step (one new token per row on a KV cache) of a small model on a CPU, transformers'
``forward`` spends as long between the ops as in them: ``bench/floor.py --stages decode`` put
SmolLM2-135M's search round (90 rows × 128 tokens, 2 AMD Zen 5 cores) at 12.7 ms a step of Python
and dispatch plus 10.6 ms of small ops (norms, rotary, masks, cache writes) against 104 ms in all;
the decoder layers' ``forward`` (their keyword plumbing, deprecation wrappers, per-layer mask
lookup, output records) is most of it. :class:`DecodeStep` runs the same arithmetic from the same
modules with none of that:

- the query, key and value projections as one product, and the gate and up projections as one
  (their weights concatenated once, kept while the weights are unchanged; packed as
  :class:`~difflens.models.packed.PackedLinears` packs any linear layer);
- the rotary embedding of the queries and keys in one go (the model's own ``rotary_emb`` gives cos
  and sin), the cache written through the cache's own ``update``;
- the padding mask made additive once a step, not once a layer; attention by
  :func:`~difflens.models.decoding.step_attention` (the compiled kernel where it serves);
- the norms, activation, embedding and unembedding are the model's own modules' ``forward``.

The same round then takes 89.6 ms a step: 5.8 ms of Python and dispatch, 8.0 ms of small ops.

A decoder layer's forward hooks run on its output as they would in ``forward`` (the steering
vector is one): hooks that take keyword arguments, pre-hooks, hooks on any other module, a
replaced ``forward`` or a global module hook leave the step to ``forward``. So do other
architectures (only ``llama``, ``qwen2`` and ``qwen3`` decoders whose layers all attend fully, with
SiLU-gated MLPs), a model not wholly float32 on the CPU, LoRA or other wrapped layers, and
``DIFFLENS_DECODE_STEP=0``. Its logits equal ``forward``'s to float rounding (fused products sum in
another order): ``tests/models/test_decode_step.py`` checks them teacher-forced and the greedy
tokens of whole loops, steered and not, on tiny Llama, Qwen2 and Qwen3 models.
"""
from __future__ import annotations

import os
import weakref
from typing import Any, Callable

import torch
from torch import nn

from .arch import attention_heads, text_config, unwrap
from .packed import MEMORY_SHARE, PackedLinears, _free_bytes, is_packed_forward, stage_store

__all__ = ["FAMILIES", "DecodeStep", "decode_step"]

FAMILIES = frozenset({"llama", "qwen2", "qwen3"})
"""Decoder families whose layers :class:`DecodeStep` runs: pre-norm, rotary attention over q/k/v/o
projections (Qwen3: RMS-normed queries and keys per head), residual, pre-norm, gated MLP."""


def _fused(parts: list[nn.Linear]) -> nn.Linear:
    """One linear layer whose output is the concatenation of ``parts``' outputs (copied weights)."""
    w = torch.cat([p.weight.detach() for p in parts], 0)
    bias = None
    if any(p.bias is not None for p in parts):
        bias = torch.cat([p.bias.detach() if p.bias is not None else p.weight.new_zeros(p.weight.shape[0])
                          for p in parts])
    out = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta")
    out.weight = nn.Parameter(w, requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias, requires_grad=False)
    return out


class _Layer:
    """One decoder layer's parts as the step uses them."""

    def __init__(self, module: nn.Module, fuse: bool) -> None:
        attn, mlp = module.self_attn, module.mlp
        self.module = module
        self.ln1, self.ln2 = module.input_layernorm.forward, module.post_attention_layernorm.forward
        qn, kn = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.q_norm = qn.forward if qn is not None else None
        self.k_norm = kn.forward if kn is not None else None
        self.scale = float(attn.scaling)
        self.o, self.down, self.act = attn.o_proj, mlp.down_proj, mlp.act_fn
        self.q_proj, self.k_proj, self.v_proj = attn.q_proj, attn.k_proj, attn.v_proj
        self.gate, self.up = mlp.gate_proj, mlp.up_proj
        self.qkv = _fused([attn.q_proj, attn.k_proj, attn.v_proj]) if fuse else None
        self.gate_up = _fused([mlp.gate_proj, mlp.up_proj]) if fuse else None

    def fused(self) -> list[nn.Linear]:
        return [m for m in (self.qkv, self.gate_up) if m is not None]


def _weights(inner: nn.Module) -> tuple[tuple[int, int], ...]:
    """Storage and version of every parameter: a fused copy is remade when any of them changed."""
    return tuple((p.data_ptr(), p._version) for p in inner.parameters())


def _inert(hook: Any) -> bool:
    """transformers' output-capturing hooks (installed on many modules): they record only inside a
    ``forward`` asked for hidden states or attentions, never in a step run without ``forward``."""
    return getattr(hook, "__module__", "") == "transformers.utils.output_capturing" \
        and getattr(hook, "__name__", "") == "output_capturing_hook"


def _live(hooks: dict[int, Any]) -> list[Any]:
    return [h for h in hooks.values() if not _inert(h)]


def _refusal(model: nn.Module) -> str | None:
    """Why :class:`DecodeStep` cannot run ``model`` (None: it can)."""
    cfg = getattr(model, "config", None)
    text = text_config(cfg) if cfg is not None else None
    if text is None or getattr(text, "model_type", None) not in FAMILIES:
        return "not a llama, qwen2 or qwen3 decoder"
    if any(t != "full_attention" for t in (getattr(text, "layer_types", None) or [])) \
            or getattr(text, "use_sliding_window", False):
        return "sliding-window layers"
    if str(getattr(text, "hidden_act", "silu")) != "silu" or getattr(text, "pretraining_tp", 1) != 1:
        return "another activation or tensor-parallel split"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if inner is None or layers is None or not all(hasattr(inner, a) for a in ("embed_tokens", "norm", "rotary_emb")) \
            or not hasattr(model, "lm_head"):
        return "another module layout"
    params = list(model.parameters())
    if not params or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        return "not wholly float32 on the CPU"
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return "a global module hook"
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None or not all(
                type(getattr(attn, a, None)) is nn.Linear for a in ("q_proj", "k_proj", "v_proj", "o_proj")) \
                or not all(type(getattr(mlp, a, None)) is nn.Linear for a in ("gate_proj", "up_proj", "down_proj")) \
                or not hasattr(layer, "input_layernorm") or not hasattr(layer, "post_attention_layernorm"):
            return "another layer layout (wrapped or adapted projections)"
        if _live(layer._forward_pre_hooks) or layer._forward_hooks_with_kwargs or "forward" in layer.__dict__:
            return "a pre-hook, a keyword hook or a replaced forward on a decoder layer"
    layer_ids = {id(layer) for layer in layers}
    for name, m in model.named_modules():
        if id(m) in layer_ids:
            continue
        if _live(m._forward_hooks) or _live(m._forward_pre_hooks) or getattr(m, "_hf_hook", None) is not None:
            return f"a hook on {name or 'the model'}"
        if "forward" in m.__dict__ and not is_packed_forward(m):  # the fused products would bypass it
            return f"a replaced forward on {name or 'the model'}"
    return None


class DecodeStep:
    """The decode steps of one Llama-family model (:func:`decode_step` builds it, or says why not).

    ``step(ids, add, positions, cache, attend=...)``: ``ids`` [B, 1] the new tokens, ``add`` the
    additive mask [B, L] over every cached position and the new one (0 attend, -inf not),
    ``positions`` [B, 1]; ``cache`` a :func:`~difflens.models.decoding.growing_cache`; ``attend`` the
    attention (:func:`~difflens.models.decoding.step_attention`'s signature; the decode loop hands it
    in, so this module does not import the loop's). Returns the last position's logits
    [B, V]. Inside ``with step:`` the fused projections are packed (:class:`PackedLinears`); the
    model's own linear layers (the output, down and unembedding projections) run as the caller's
    packing leaves them."""

    def __init__(self, model: nn.Module, fuse: bool) -> None:
        inner = model.model  # not kept: a stage keeps the step by the model, weakly, and must not keep it alive
        self.embed, self.norm, self.rotary = inner.embed_tokens.forward, inner.norm.forward, inner.rotary_emb
        self.lm_head = model.lm_head
        self.heads, self.kv_heads, self.head_dim = attention_heads(text_config(model.config))
        self.layers = [_Layer(m, fuse) for m in inner.layers]
        self.signature = _weights(inner) if fuse else ()
        self.fused = fuse
        self._packer: PackedLinears | None = None
        self._enabled: bool | None = None

    def packed(self, enabled: bool | None) -> "DecodeStep":
        """Pack the fused projections inside ``with`` (``enabled`` as :class:`PackedLinears` takes it)."""
        self._enabled = enabled
        return self

    def __enter__(self) -> "DecodeStep":
        holder = nn.ModuleList([m for layer in self.layers for m in layer.fused()])
        self._packer = PackedLinears(holder, enabled=self._enabled).__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._packer is not None:
            self._packer.__exit__(*exc)
            self._packer = None

    def pack(self, rows: int) -> None:
        """The fused projections packed for ``rows`` rows (MKL's packs serve one row count)."""
        if self._packer is not None:
            self._packer.pack(rows)

    def _qk_v(self, layer: _Layer, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The queries and keys as one [B, heads + kv heads, hd] tensor (normed, not yet rotated), and
        the values [B, kv heads, hd]."""
        b, hd, nq, nk = h.shape[0], self.head_dim, self.heads, self.kv_heads
        qk = None
        if layer.qkv is not None:
            out = layer.qkv(h).view(b, nq + 2 * nk, hd)
            q, k, v = out[:, :nq], out[:, nq:nq + nk], out[:, nq + nk:]
            qk = out[:, :nq + nk]  # adjacent heads of the one product: a view
        else:
            q, k, v = layer.q_proj(h).view(b, nq, hd), layer.k_proj(h).view(b, nk, hd), layer.v_proj(h).view(b, nk, hd)
        if layer.q_norm is not None:
            qk = torch.cat([layer.q_norm(q), layer.k_norm(k)], 1)
        elif qk is None:
            qk = torch.cat([q, k], 1)
        return qk, v

    def __call__(self, ids: torch.Tensor, add: torch.Tensor, positions: torch.Tensor, cache: Any, *,
                 attend: Callable[..., torch.Tensor]) -> torch.Tensor:
        b = ids.shape[0]
        hd, nq, nk = self.head_dim, self.heads, self.kv_heads
        x = self.embed(ids)  # [B, 1, d]: the shape a layer's hooks see in forward
        cos, sin = self.rotary(x, positions)  # [B, 1, hd]
        cos, sin = cos.view(b, 1, hd), sin.view(b, 1, hd)
        half = hd // 2
        for i, layer in enumerate(self.layers):
            h = layer.ln1(x).view(b, -1)
            qk, v = self._qk_v(layer, h)
            # rotary, as transformers' apply_rotary_pos_emb: qk·cos + rotate_half(qk)·sin
            qk = torch.cat([qk[..., half:].neg(), qk[..., :half]], -1).mul_(sin).addcmul_(qk, cos)
            keys, values = cache.layers[i].update(qk[:, nq:, None], v[:, :, None], i)
            out = attend(qk[:, :nq, None], keys, values, add, layer.scale)  # [B, nq, 1, hd]
            x = x + layer.o(out.view(b, 1, nq * hd))
            h = layer.ln2(x)
            if layer.gate_up is not None:
                gu = layer.gate_up(h)
                inter = gu.shape[-1] // 2
                h = layer.act(gu[..., :inter]).mul_(gu[..., inter:])
            else:
                h = layer.act(layer.gate(h)).mul_(layer.up(h))
            x = x + layer.down(h)
            for hook in _live(layer.module._forward_hooks):
                res = hook(layer.module, (x,), x)
                if res is not None:
                    x = res
        return self.lm_head(self.norm(x))[:, -1]


def decode_step(model: nn.Module, cache: Any) -> DecodeStep | None:
    """The :class:`DecodeStep` for ``model`` and ``cache`` (None where it cannot serve: see the module
    doc; ``cache`` must be a :func:`~difflens.models.decoding.growing_cache` with a growing layer per
    decoder layer). Its fused projections are copies of the weights, made only where they and their
    pack fit :data:`~difflens.models.packed.MEMORY_SHARE` of the free memory (else the step runs the
    model's own projections one by one). Inside a stage (:func:`~difflens.models.packed.keep_packs`)
    the step is made once per model, remade when a weight changed, and freed with the stage's packs
    (kept by the model weakly); outside one, each call makes its own."""
    if os.environ.get("DIFFLENS_DECODE_STEP", "1").strip() == "0":
        return None
    if unwrap(model) is not model or _refusal(model) is not None:
        return None
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) != len(model.model.layers) or not all(hasattr(c, "kbuf") for c in layers):
        return None
    store = stage_store()
    steps = store.setdefault("decode_steps", weakref.WeakKeyDictionary()) if store is not None else {}
    step = steps.get(model)
    if step is not None and (not step.fused or step.signature == _weights(model.model)):
        return step
    need = 2 * 4 * sum(m.weight.numel() for layer in model.model.layers
                       for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                                 layer.mlp.gate_proj, layer.mlp.up_proj))
    free = _free_bytes()
    fuse = free is None or need <= MEMORY_SHARE * free
    steps.pop(model, None)  # the old copies go before new ones are made
    step = DecodeStep(model, fuse)
    if store is not None:
        steps[model] = step
    return step


def additive_mask(attend: torch.Tensor) -> torch.Tensor:
    """[B, L] 0/1 (or bool) attention mask as the additive float32 mask a step takes."""
    return torch.zeros(attend.shape, dtype=torch.float32, device=attend.device).masked_fill_(attend == 0,
                                                                                             float("-inf"))

