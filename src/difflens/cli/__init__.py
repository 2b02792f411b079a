"""The ``difflens`` command line: :mod:`.main` (run-directory commands), :mod:`.organism` (the
``organism`` sub-app) and :mod:`.options` (shared options, the one LLM-client factory)."""
from __future__ import annotations

from .main import app, main

__all__ = ["app", "main"]
