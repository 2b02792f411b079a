"""The agent's model access (``ask_model``, ``generate_steered``) through any generation backend."""
from __future__ import annotations

from typing import Any

from ..agent.tools import DEFAULT_MAX_NEW_TOKENS, InProcessModels
from . import GenerationBackend

__all__ = ["BackendModels"]


class BackendModels(InProcessModels):
    """The agent's ModelAccess (:class:`~difflens.agent.tools.InProcessModels`: same seeds, α, η,
    temperature and lengths) with every generation through ``backend``."""

    def __init__(self, layout: Any, backend: GenerationBackend, **kw: Any):
        super().__init__(layout, pair_loader=lambda: backend, **kw)
        self.backend = backend

    def ask(self, prompts: list[str]) -> dict[str, list[str]]:
        prompts = list(prompts)
        if not prompts:
            return {"base": [], "finetuned": []}
        seed = self._next_seed()
        kw: dict[str, Any] = dict(layer=0, direction=None, alpha=0.0, eta=1.0, n=1, temperature=self.temperature,
                                  max_new_tokens=self.max_new_tokens, seed=seed)
        base = self.backend.generate(prompts, side="base", **kw)
        ft = self.backend.generate(prompts, side="ft", **kw)
        return {"base": [b[0] for b in base], "finetuned": [f[0] for f in ft]}

    def steered(self, dataset: str, layer: int, position: int, prompts: list[str], n: int) -> list[list[str]]:
        from ..adl.collect import load_collected
        from ..run import artifacts as A

        prompts = list(prompts)
        if not prompts or n < 1:
            return [[] for _ in prompts]
        key = (dataset, int(layer))
        if key not in self._steering:
            self._steering[key] = A.load(A.SteeringResult, self.layout.steering(dataset, layer))
        steer = self._steering[key]
        alpha = steer.alpha(position)  # KeyError: no threshold for this position
        if key not in self._delta:
            self._delta[key] = load_collected(self.layout, dataset, layer).delta
        delta = self._delta[key]
        if not 0 <= position < delta.shape[0]:
            raise KeyError(f"position {position} was not collected (k={delta.shape[0]})")
        seed = self._next_seed()
        length = min(self.max_new_tokens, steer.max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
        return self.backend.generate(prompts, layer=layer, direction=delta[position], alpha=alpha, eta=steer.eta_ft,
                                     n=n, temperature=steer.temperature, max_new_tokens=length, seed=seed, side="ft")
