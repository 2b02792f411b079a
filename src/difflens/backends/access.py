"""The agent's model access (``ask_model``, ``generate_steered``) through any generation backend."""
from __future__ import annotations

from typing import Any

from ..agent.tools import InProcessModels
from . import GenerationBackend

__all__ = ["BackendModels"]


class BackendModels(InProcessModels):
    """The agent's ModelAccess (:class:`~difflens.agent.tools.InProcessModels`: same seeds, α, η,
    temperature and lengths) with every generation through ``backend``."""

    def __init__(self, layout: Any, backend: GenerationBackend, **kw: Any):
        super().__init__(layout, pair_loader=lambda: backend, **kw)
        self.backend = backend

    def _generate(self, prompts: list[str], **kw: Any) -> list[list[str]]:
        return self.backend.generate(prompts, **kw)
