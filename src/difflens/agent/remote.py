"""The agent's model access through an OpenAI-compatible endpoint — ``difflens serve`` on another
machine, or vLLM serving a large pair — instead of in-process models.

The endpoint must offer models named ``base`` and ``finetuned`` and, for ``generate_steered``,
``steered-p{j}`` (what ``difflens serve`` exposes; with vLLM, name the served models so). Requests go
through the shared LLM client (retries, accounting; no cache, so every sample is fresh).
"""
from __future__ import annotations

from typing import Any

from ..llm import LLMClient, LLMConfig

__all__ = ["EndpointModels"]


class EndpointModels:
    """:class:`~.tools.ModelAccess` over an endpoint; ``dataset``/``layer`` of steered calls are those the
    server was started for (``difflens serve RUN --dataset … --layer …``)."""

    def __init__(self, base_url: str, *, api_key_env: str = "", max_tokens: int = 200, temperature: float = 1.0,
                 timeout_s: float = 300.0):
        self.max_tokens, self.temperature = max_tokens, temperature
        self._clients: dict[str, LLMClient] = {}
        self._cfg = dict(base_url=base_url, api_key_env=api_key_env, cache=False, timeout_s=timeout_s)

    def _client(self, model: str) -> LLMClient:
        if model not in self._clients:
            self._clients[model] = LLMClient(LLMConfig(model=model, **self._cfg))  # type: ignore[arg-type]
        return self._clients[model]

    def _one(self, model: str, prompt: str) -> str:
        r = self._client(model).chat([{"role": "user", "content": prompt}], temperature=self.temperature,
                                     max_tokens=self.max_tokens)
        return r.text

    def ask(self, prompts: list[str]) -> dict[str, list[str]]:
        return {"base": [self._one("base", p) for p in prompts],
                "finetuned": [self._one("finetuned", p) for p in prompts]}

    def steered(self, dataset: str, layer: int, position: int, prompts: list[str], n: int) -> list[list[str]]:
        return [[self._one(f"steered-p{position}", p) for _ in range(n)] for p in prompts]

    def usage(self) -> dict[str, Any]:
        return {m: c.usage_summary() for m, c in self._clients.items()}
