"""Generation backends: who samples the final steered / unsteered generations, ``ask_model`` and
``generate_steered``.

- ``hf`` (default, the reference): the run's own transformers model pair in process, steering by a
  forward hook (:mod:`difflens.adl.steering`).
- ``vllm`` (optional extra ``difflens[vllm]``): vLLM engines over the same checkpoints, with tensor
  parallelism, the steering vector added by vLLM's own per-request mechanism
  (:mod:`difflens.backends.vllm`).

Both implement :class:`GenerationBackend`: ``generate`` has the signature and meaning of
:func:`difflens.adl.steering.generate` (``n`` samples per prompt of the finetuned model steered by
``α · η · v̂`` at layer ``layer``'s output at every prompt and generated position; ``direction=None``
unsteered; ``side="base"`` the base model, unsteered). :class:`~difflens.backends.access.BackendModels`
is the agent's :class:`~difflens.agent.tools.ModelAccess` over any backend.

:func:`check_backend` validates a ``--backend`` choice before anything heavy happens: choosing
``vllm`` without vLLM installed is a :class:`~difflens.errors.ConfigError` that names the extra.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from ..errors import ConfigError

__all__ = ["BACKENDS", "GenerationBackend", "HFBackend", "check_backend", "backend_for_run", "final_generations",
           "final_generations_batch", "final_records"]

BACKENDS = ("hf", "vllm")


@runtime_checkable
class GenerationBackend(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], *, layer: int, direction: Any, alpha: float, eta: float, n: int,
                 temperature: float, max_new_tokens: int, seed: int, side: str = "ft") -> list[list[str]]:
        """``n`` samples per prompt (see the module docstring)."""
        ...


def check_backend(name: str) -> str:
    """``name`` if it is a usable backend here; a ConfigError naming the fix otherwise (no model loads)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown generation backend {name!r}: choose from {', '.join(BACKENDS)}.")
    if name == "vllm":
        from .vllm import require_vllm

        require_vllm()
    return name


class HFBackend:
    """The reference: :func:`difflens.adl.steering.generate` on a transformers pair (loaded on first use)."""

    name = "hf"

    def __init__(self, pair: Any = None, *, pair_loader: Callable[[], Any] | None = None):
        if pair is None and pair_loader is None:
            raise ValueError("HFBackend needs a pair or a pair_loader")
        self._pair, self._loader = pair, pair_loader

    def holds(self, pair: Any) -> bool:
        """Whether this backend samples from ``pair`` itself (asked without loading a pair)."""
        return self._pair is pair

    @property
    def pair(self) -> Any:
        if self._pair is None:
            assert self._loader is not None
            self._pair = self._loader()
        return self._pair

    def generate(self, prompts: Sequence[str], *, layer: int, direction: Any, alpha: float, eta: float, n: int,
                 temperature: float, max_new_tokens: int, seed: int, side: str = "ft") -> list[list[str]]:
        from ..adl.steering import generate

        return generate(self.pair, prompts, layer=layer, direction=direction, alpha=alpha, eta=eta, n=n,
                        temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, side=side)


def final_generations(backend: GenerationBackend, *, layer: int, position: int | None, direction: Any,
                      alpha: float, eta: float, cfg: Any) -> list[Any]:
    """:func:`difflens.adl.steering.final_generations` through any backend (same prompts, samples,
    temperature, length and seed): ``final_samples`` generations per steering prompt."""
    from ..rundir.artifacts import Generation

    outs = backend.generate(cfg.prompts, layer=layer, direction=direction, alpha=alpha, eta=eta, n=cfg.final_samples,
                            temperature=cfg.final_temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 17)
    return [Generation(prompt=p, position=position, alpha=alpha if direction is not None else 0.0, sample=s, text=t)
            for p, texts in zip(cfg.prompts, outs) for s, t in enumerate(texts)]


def final_generations_batch(backend: GenerationBackend, jobs: Sequence[tuple[int | None, Any, float, str | None]], *,
                            layer: int, eta: float, cfg: Any,
                            done: Mapping[tuple[int, int], list[str]] | None = None,
                            on_call: Callable[[int, int, list[str]], None] | None = None) -> list[Any]:
    """Final generations of several (position, direction, α, control) jobs — each
    ``final_samples`` per steering prompt, as :func:`final_generations` — in as few generation calls
    as memory allows: one batch of rows with a steering vector each on the HF backend
    (:func:`difflens.adl.steering.generate_many`, seeded ``cfg.seed + 17`` per call), one call per
    job on a backend without per-row vectors. ``control`` (e.g. ``"random"``) marks control rows.
    ``done`` ((call, calls) → its texts, from an interrupted run) skips finished calls; ``on_call(c,
    calls, texts)`` after each call that ran, so the caller can save it."""
    if not jobs:
        return []
    n, prompts = cfg.final_samples, cfg.prompts
    if isinstance(backend, HFBackend):
        from ..adl.steering import GenerationRequest, generate_many

        outs = generate_many(backend.pair, [GenerationRequest(prompts, d, a, n) for _, d, a, _ in jobs],
                             layer=layer, eta=eta, temperature=cfg.final_temperature,
                             max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 17, done=done, on_call=on_call)
    else:  # one call per job: its texts, prompt by prompt
        outs = []
        for c, (_, d, a, _) in enumerate(jobs):
            flat = (done or {}).get((c, len(jobs)))
            if flat is None or len(flat) != len(prompts) * n:
                per = backend.generate(prompts, layer=layer, direction=d, alpha=a, eta=eta, n=n,
                                       temperature=cfg.final_temperature, max_new_tokens=cfg.max_new_tokens,
                                       seed=cfg.seed + 17)
                flat = [t for texts in per for t in texts]
                if on_call is not None:
                    on_call(c, len(jobs), flat)
            outs.append([flat[i * n:(i + 1) * n] for i in range(len(prompts))])
    return final_records(jobs, outs, cfg)


def final_records(jobs: Sequence[tuple[int | None, Any, float, str | None]], outs: Sequence[Sequence[Sequence[str]]],
                  cfg: Any) -> list[Any]:
    """The :class:`~difflens.rundir.artifacts.Generation` records of final-generation ``jobs``
    from their texts ``outs[job][prompt][sample]``."""
    from ..rundir.artifacts import Generation

    gens = []
    for (pos, d, a, control), per in zip(jobs, outs):
        for p, texts in zip(cfg.prompts, per):
            for si, t in enumerate(texts):
                g = Generation(prompt=p, position=pos, alpha=a if d is not None else 0.0, sample=si, text=t)
                gens.append(g.model_copy(update={"control": control}) if control else g)
    return gens


def _pair_of_run(layout: Any) -> Any:
    """The pair named in a run's manifest (loaded here: the run stages import this package, not the reverse)."""
    from ..errors import RunDirError
    from ..files import read_json
    from ..models.pair import load_pair

    if not layout.manifest.exists():
        raise RunDirError(f"{layout.root} has no manifest.json: run `difflens collect ... --out {layout.root}` first.")
    models = read_json(layout.manifest)["models"]
    return load_pair(models["base"]["spec"], models["finetuned"]["spec"])


def backend_for_run(name: str, layout: Any, **options: Any) -> GenerationBackend:
    """The backend ``name`` over the pair named in a run's manifest (nothing loads until the first call).

    ``options`` go to :class:`~difflens.backends.vllm.VLLMOptions` for ``vllm`` (e.g.
    ``tensor_parallel_size``); ``hf`` takes none.
    """
    check_backend(name)
    if name == "hf":
        if options:
            raise ConfigError(f"options {sorted(options)} apply to the vllm backend only.")
        return HFBackend(pair_loader=lambda: _pair_of_run(layout))
    from ..files import read_json
    from .vllm import VLLMBackend, VLLMOptions

    models = read_json(layout.manifest)["models"]
    return VLLMBackend(models["base"]["spec"], models["finetuned"]["spec"], VLLMOptions(**options))
