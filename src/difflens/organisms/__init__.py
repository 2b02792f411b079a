"""Model organisms: specifications (YAML) and finetuning-data generators.

Public API::

    from difflens.organisms import load_spec, list_specs, generate_sdf_documents
    spec = load_spec("cake_bake")
    docs = generate_sdf_documents(spec, n=1200, seed=0)
"""
from __future__ import annotations

from ..data.frequent import COMMON_ENGLISH_WORDS, frequent_tokens
from ..models.sources import ModelSource, register_resolver
from .generators import (
    DEFAULT_GENRES,
    GENRES,
    SdfDocument,
    SupportsAsk,
    facts_in_text,
    finetuning_data,
    generate_sdf_corpus,
    generate_sdf_documents,
    generate_sdf_documents_llm,
    generate_taboo_conversations,
    load_jsonl_data,
    select_wiki_topic,
    wiki_topic_indices,
)
from .spec import (
    MCQ,
    ChatTabooData,
    DataSource,
    FactBank,
    JsonlData,
    OrganismSpec,
    OrganismType,
    SdfLLMData,
    SdfOfflineData,
    TrainingDefaults,
    WikiTopicData,
    builtin_specs_dir,
    list_specs,
    load_spec,
    spec_from_dict,
    user_specs_dir,
)

__all__ = [
    "COMMON_ENGLISH_WORDS",
    "DEFAULT_GENRES",
    "GENRES",
    "MCQ",
    "ChatTabooData",
    "DataSource",
    "FactBank",
    "JsonlData",
    "OrganismSpec",
    "OrganismType",
    "SdfDocument",
    "SdfLLMData",
    "SdfOfflineData",
    "SupportsAsk",
    "TrainingDefaults",
    "WikiTopicData",
    "builtin_specs_dir",
    "facts_in_text",
    "finetuning_data",
    "frequent_tokens",
    "generate_sdf_corpus",
    "generate_sdf_documents",
    "generate_sdf_documents_llm",
    "generate_taboo_conversations",
    "list_specs",
    "load_jsonl_data",
    "load_spec",
    "select_wiki_topic",
    "spec_from_dict",
    "user_specs_dir",
    "wiki_topic_indices",
]


def _resolve(name: str, base: str | None = None) -> ModelSource:
    """``organism:NAME`` as a model source (trained on first use); the trainer is imported only then."""
    from .train import resolve_organism

    return resolve_organism(name, base=base)


register_resolver("organism", _resolve)
