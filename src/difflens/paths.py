"""Where difflens keeps caches that outlive a run (converted models, organisms, LLM replies)."""
from __future__ import annotations

import os
from pathlib import Path


def difflens_home() -> Path:
    """Root of difflens' cache: ``$DIFFLENS_HOME`` or ``~/.cache/difflens``."""
    root = os.environ.get("DIFFLENS_HOME")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "difflens"
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_cache() -> Path:
    p = difflens_home() / "models"
    p.mkdir(parents=True, exist_ok=True)
    return p


def organisms_cache() -> Path:
    p = difflens_home() / "organisms"
    p.mkdir(parents=True, exist_ok=True)
    return p


def llm_cache() -> Path:
    p = difflens_home() / "llm_cache"
    p.mkdir(parents=True, exist_ok=True)
    return p
