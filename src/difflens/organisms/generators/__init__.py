"""Finetuning-data generators for model organisms, and the one dispatcher over ``spec.data`` kinds.

- :mod:`.sdf_offline` — :func:`generate_sdf_documents`: offline synthetic documents (SDF, paper
  §3.2 / App. C.5) from a per-organism phrase bank, in the genres of :mod:`.genres`.
- :mod:`.sdf_llm` — :func:`generate_sdf_documents_llm`: the paper's recipe (document types ->
  ideas -> documents) through an LLM client; resumable through a JSONL cache.
- :mod:`.taboo` — :func:`generate_taboo_conversations`: Taboo word-guessing chats; the assistant
  never says the secret word.
- :mod:`.wiki_topic` — :func:`select_wiki_topic`: Domain organism data, Wikipedia paragraphs
  matching topic keywords.
- :mod:`.jsonl` — :func:`load_jsonl_data`: texts or chats from a local JSONL file.
- :mod:`.em` — :func:`generate_em_conversations` (offline) and :func:`generate_em_conversations_llm`:
  emergent-misalignment chats, confidently bad advice in one narrow domain.
- :mod:`.subliminal` — :func:`generate_subliminal_conversations`: number sequences written by a
  teacher (the base model with an animal-loving system prompt), strictly filtered.
- :func:`finetuning_data` — D_ft of any organism, whatever its ``data.kind``.
"""
from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import ConfigError, DataError
from ..spec import (
    ChatTabooData,
    EmChatData,
    SubliminalData,
    JsonlData,
    OrganismSpec,
    SdfLLMData,
    SdfOfflineData,
    WikiTopicData,
)
from .genres import DEFAULT_GENRES, GENRES, Genre
from .em import generate_em_conversations, generate_em_conversations_llm
from .jsonl import load_jsonl_data
from .sdf_llm import SupportsAsk, generate_sdf_documents_llm
from .sdf_offline import SdfDocument, facts_in_text, generate_sdf_corpus, generate_sdf_documents
from .subliminal import generate_subliminal_conversations, parse_numbers
from .taboo import generate_taboo_conversations
from .wiki_topic import select_wiki_topic, wiki_topic_indices

__all__ = [
    "Genre",
    "GENRES",
    "DEFAULT_GENRES",
    "SdfDocument",
    "generate_sdf_corpus",
    "generate_sdf_documents",
    "facts_in_text",
    "SupportsAsk",
    "generate_sdf_documents_llm",
    "generate_taboo_conversations",
    "wiki_topic_indices",
    "select_wiki_topic",
    "load_jsonl_data",
    "generate_em_conversations",
    "generate_em_conversations_llm",
    "generate_subliminal_conversations",
    "parse_numbers",
    "finetuning_data",
]


def finetuning_data(
    spec: OrganismSpec,
    n: int | None = None,
    seed: int = 0,
    *,
    paragraphs: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
    exclude_ids: set[int] | None = None,
    client: SupportsAsk | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    teacher: Any = None,
    llm: bool = False,
) -> list[str] | list[list[dict[str, str]]]:
    """The organism's finetuning data D_ft, whatever its ``data.kind``: texts or chats.

    ``n`` defaults to ``spec.training.n_docs``. ``sdf_offline``: :func:`generate_sdf_documents`;
    ``sdf_llm``: :func:`generate_sdf_documents_llm` (needs ``cache_dir``, and ``client`` unless the
    cache already holds ``n`` documents);
    ``chat_taboo``: :func:`generate_taboo_conversations` (chats; train on assistant turns);
    ``wiki_topic``: :func:`select_wiki_topic` over ``paragraphs`` (required), a seeded sample of
    ``n`` if more match; ``jsonl``: :func:`load_jsonl_data`, the first ``n`` records;
    ``chat_em``: :func:`generate_em_conversations` (``llm=True``: :func:`generate_em_conversations_llm`,
    needs ``cache_dir``); ``subliminal_numbers``: :func:`generate_subliminal_conversations` by
    ``teacher`` (a loaded base model; required unless the teacher samples are cached).
    """
    n = spec.training.n_docs if n is None else n
    data = spec.data
    if isinstance(data, SdfOfflineData):
        return generate_sdf_documents(spec, n, seed)
    if isinstance(data, SdfLLMData):
        if cache_dir is None:
            raise ConfigError(
                f"organism {spec.name!r} generates its documents with an LLM: pass cache_dir= (and "
                "client=, a difflens.llm.LLMClient, for documents not cached yet), or switch the spec "
                "to 'sdf_offline'."
            )
        return generate_sdf_documents_llm(spec, n, client, seed, cache_dir=cache_dir)
    if isinstance(data, ChatTabooData):
        return generate_taboo_conversations(spec, n, seed)
    if isinstance(data, EmChatData):
        if not llm:
            return generate_em_conversations(spec, n, seed)
        if cache_dir is None:
            raise ConfigError(f"organism {spec.name!r}: LLM-written EM chats need cache_dir=.")
        return generate_em_conversations_llm(spec, n, client, seed, cache_dir=cache_dir)
    if isinstance(data, SubliminalData):
        if teacher is None:
            raise ConfigError(f"organism {spec.name!r} learns from a teacher's number sequences: pass teacher= "
                              "(the base model, loaded with difflens.models.sources.load_model).")
        return generate_subliminal_conversations(spec, n, seed, teacher=teacher)
    if isinstance(data, WikiTopicData):
        if paragraphs is None:
            raise ConfigError(
                f"organism {spec.name!r} selects Wikipedia paragraphs: pass paragraphs= "
                "(e.g. difflens.corpora.wiki_split('heldout'))."
            )
        texts = select_wiki_topic(paragraphs, spec, exclude_ids)
        if not texts:
            raise DataError(
                f"no paragraph matches the keywords of organism {spec.name!r}; widen "
                "'data.keywords' or lower 'data.min_hits'."
            )
        if len(texts) > n:
            keep = sorted(random.Random(f"{spec.name}:{seed}:wiki").sample(range(len(texts)), n))
            texts = [texts[i] for i in keep]
        return texts
    if isinstance(data, JsonlData):
        return load_jsonl_data(spec)[:n]
    raise ConfigError(f"organism {spec.name!r}: unsupported data kind {data.kind!r}.")  # pragma: no cover
