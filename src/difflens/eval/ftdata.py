"""The finetuning data D_ft and the true objective of a run: from an organism spec or from files.

Evaluation compares ADL results with what the finetuned model was trained on. For a built-in or
user organism both come from its spec (the same samples the trainer used, regenerated
deterministically; LLM-written documents from their on-disk cache); for any other pair the user
names a data file (``--ft-data``) and a description (``--description``). Chat-format D_ft counts
its assistant turns only (paper §3, footnote 5): the user turns are not what the model learned to
write.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError
from ..files import read_json, write_json

__all__ = ["FtData", "assistant_texts", "ft_data_from_file", "ft_data_from_spec", "organism_of_run",
           "frequent_ft_tokens", "common_tokens", "chat_assistant_texts", "resolve_ft_data"]


@dataclass
class FtData:
    """D_ft as plain texts plus, when known, the true objective."""

    name: str
    texts: list[str]
    description: str | None = None
    organism: str | None = None
    organism_type: str | None = None
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "organism": self.organism, "type": self.organism_type, "source": self.source,
                "n_texts": len(self.texts), "hash": self.content_hash}


def assistant_texts(sample: Any) -> list[str]:
    """The text of a sample: itself for a document, the assistant turns of a conversation."""
    if isinstance(sample, str):
        return [sample] if sample.strip() else []
    if isinstance(sample, list):
        return [m["content"] for m in sample if isinstance(m, dict) and m.get("role") == "assistant"
                and isinstance(m.get("content"), str) and m["content"].strip()]
    return []


def _flatten(samples: Sequence[Any]) -> list[str]:
    return [t for s in samples for t in assistant_texts(s)]


def ft_data_from_spec(spec: Any, *, train_config: dict[str, Any] | None = None, base: str | None = None) -> FtData:
    """D_ft of an organism: its finetuning samples under ``train_config`` (the trained variant's card;
    default: the spec's training defaults) and its grader description as the true objective.
    ``base`` is the pair's base model (a subliminal organism's teacher; its samples are cached)."""
    from ..organisms.train import TrainConfig, ft_samples

    keep = set(TrainConfig.model_fields)
    cfg = TrainConfig.from_spec(spec, **{k: v for k, v in (train_config or {}).items() if k in keep
                                         and k in ("n_docs", "seed", "generator")})
    try:
        samples = ft_samples(spec, cfg, base=base)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. an LLM recipe whose documents were never generated
        raise DataError(f"cannot rebuild the finetuning data of organism {spec.name!r}: {e}. Pass --ft-data "
                        f"with the data file instead.") from e
    texts = _flatten(samples)
    if not texts:
        raise DataError(f"organism {spec.name!r} has no finetuning texts.")
    return FtData(name=spec.name, texts=texts, description=spec.grader_description(), organism=spec.name,
                  organism_type=str(spec.type), source=f"organism spec {spec.source_path or spec.name}",
                  info={"n_samples": len(samples), "chat": spec.is_chat, "n_docs": cfg.n_docs, "seed": cfg.seed})


def ft_data_from_file(path: str | Path, *, description: str | None = None, text_field: str = "text") -> FtData:
    """D_ft from a ``.jsonl``/``.json``/``.parquet``/``.txt`` file (chat records: assistant turns)."""
    from ..data.corpora import load_corpus

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"finetuning data file {p} does not exist.")
    corpus = load_corpus(str(p), text_field=text_field)
    texts = _flatten(corpus.texts)
    if not texts:
        raise DataError(f"{p} holds no non-empty texts (chat records need assistant turns).")
    return FtData(name=p.stem, texts=texts, description=description, source=str(p.resolve()),
                  info={"n_samples": len(corpus.texts), "chat": corpus.is_chat})


def organism_of_run(manifest: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """The organism name of a run's finetuned model (``organism:NAME``) and its training config
    (from the trained variant's card), or (None, None) for any other pair."""
    ft = manifest.get("models", {}).get("finetuned", {})
    spec = str(ft.get("spec", ""))
    if not spec.startswith("organism:"):
        return None, None
    name = spec.split(":", 1)[1]
    src = str(ft.get("source") or "")  # ModelSource.describe(): "local:PATH" or "adapter PATH on …"
    path = src.split(":", 1)[1] if src.startswith("local:") else (
        src.split(" ")[1] if src.startswith("adapter ") and len(src.split(" ")) > 1 else None)
    cfg = None
    if path:
        from ..organisms.train import read_card

        card = read_card(path)
        cfg = (card or {}).get("config")
    return name, cfg


def resolve_ft_data(manifest: dict[str, Any], *, organism: str | None = None, ft_data: str | Path | None = None,
                    description: str | None = None) -> FtData | None:
    """D_ft and the true description of a run: ``ft_data`` (a file) and/or ``organism`` (a name or
    spec YAML) when given, else the run's own ``organism:NAME`` model; None when nothing names any
    (the evaluation parts that need them are then skipped). ``description`` overrides the spec's."""
    from ..organisms.spec import load_spec

    if ft_data is not None:
        ft = ft_data_from_file(ft_data, description=description)
        if organism:
            spec = load_spec(organism)
            ft.description = description or spec.grader_description()
            ft.organism, ft.organism_type = spec.name, str(spec.type)
        return ft
    name, train_cfg = organism_of_run(manifest)
    base = manifest.get("models", {}).get("base", {}).get("spec") or None
    if organism:
        spec = load_spec(organism)
        ft = ft_data_from_spec(spec, train_config=train_cfg if name == spec.name else None, base=base)
    elif name:
        ft = ft_data_from_spec(load_spec(name), train_config=train_cfg, base=base)
    else:
        return None
    if description:
        ft.description = description
    return ft


def chat_assistant_texts(n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` assistant replies of the embedded chat data (the "normal chat" reference)."""
    import random

    from ..data.chat import chat_conversations

    texts = [t for conv in chat_conversations() for t in assistant_texts(conv) if len(t.split()) >= 3]
    rng = random.Random(f"chat:{seed}")
    return rng.sample(texts, min(n, len(texts)))


# ============================================================================================
# Frequent tokens of D_ft (the relevance grader's context, paper App. C.2)
# ============================================================================================

def common_tokens(tokenizer: Any, *, k: int = 300, min_rate: float = 1e-3, cache: Path | None = None) -> list[str]:
    """What "common English" means for this tokenizer: the (normalised) tokens of the embedded
    Wikipedia corpus among its ``k`` most frequent that make up at least ``min_rate`` of its tokens
    (the rate keeps a rare word out even where a small vocabulary has few distinct tokens). Cached
    per tokenizer when ``cache`` is given."""
    from ..data.corpora import wiki_split
    from ..data.frequent import token_counts

    if cache is not None and cache.exists():
        try:
            rec = read_json(cache)
            if rec.get("k") == k and rec.get("min_rate") == min_rate:
                return list(rec["tokens"])
        except (KeyError, ValueError, OSError):
            pass
    counts = token_counts([p["extract"] for p in wiki_split("collect")], tokenizer, common=frozenset())
    total = max(sum(counts.values()), 1)
    toks = [t for t, c in counts.most_common(k) if c / total >= min_rate]
    if cache is not None:
        write_json(cache, {"k": k, "min_rate": min_rate, "tokens": toks})
    return toks


def frequent_ft_tokens(ft: FtData, tokenizer: Any, *, k: int = 100, min_count: int = 10,
                       cache_dir: Path | None = None) -> list[str]:
    """The ``k`` most frequent tokens of D_ft occurring at least ``min_count`` times, minus common
    English words and the most frequent Wikipedia tokens; cached per dataset and tokenizer."""
    from ..data.frequent import COMMON_ENGLISH_WORDS, frequent_tokens

    tok_id = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())[:2000]).encode()).hexdigest()[:12] \
        if hasattr(tokenizer, "get_vocab") else type(tokenizer).__name__
    path = cache_dir / f"frequent-{ft.content_hash}-{tok_id}-{k}-{min_count}.json" if cache_dir else None
    if path is not None and path.exists():
        try:
            return list(read_json(path)["tokens"])
        except (KeyError, ValueError, OSError):
            pass
    from ..rundir.layout import home

    common = set(COMMON_ENGLISH_WORDS) | {t.lower() for t in common_tokens(
        tokenizer, cache=home().cache / f"common-tokens-{tok_id}.json")}
    toks = frequent_tokens(ft.texts, tokenizer, k=k, common=frozenset(common), min_count=min_count)
    if path is not None:
        write_json(path, {"dataset": ft.describe(), "tokens": toks})
    return toks
