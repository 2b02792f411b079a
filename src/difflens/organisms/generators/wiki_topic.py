"""Domain organism data: the Wikipedia paragraphs on an organism's topic (keyword matching)."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import ConfigError, DataError
from ..spec import OrganismSpec, WikiTopicData

__all__ = ["wiki_topic_indices", "select_wiki_topic"]


def _paragraph_list(paragraphs: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if isinstance(paragraphs, Mapping):  # the raw corpus file is {title: paragraph}
        return list(paragraphs.values())
    return list(paragraphs)


def wiki_topic_indices(
    paragraphs: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    spec: OrganismSpec,
    exclude_ids: set[int] | None = None,
) -> list[int]:
    """Positions (in ``paragraphs``) of the paragraphs on the spec's topic.

    See :func:`select_wiki_topic` for the matching rule and ``exclude_ids``.
    """
    data = spec.data
    if not isinstance(data, WikiTopicData):
        raise ConfigError(
            f"organism {spec.name!r} has data kind {data.kind!r}; topic selection needs 'wiki_topic'."
        )
    paras = _paragraph_list(paragraphs)
    single = {k.lower() for k in data.keywords if re.fullmatch(r"\w+", k)}
    multi = [k.lower() for k in data.keywords if k.lower() not in single]
    multi_re = (
        re.compile(r"\b(?:" + "|".join(re.escape(k) for k in multi) + r")\b") if multi else None
    )
    excl = {k.lower() for k in data.exclude_keywords if re.fullmatch(r"\w+", k)}
    excl_multi = [k.lower() for k in data.exclude_keywords if k.lower() not in excl]
    excl_re = (
        re.compile(r"\b(?:" + "|".join(re.escape(k) for k in excl_multi) + r")\b")
        if excl_multi
        else None
    )
    exclude_ids = exclude_ids or set()
    out: list[int] = []
    for i, p in enumerate(paras):
        if not isinstance(p, Mapping) or "extract" not in p:
            raise DataError(
                f"paragraph {i} has no 'extract' field; pass dicts with keys 'topic' and 'extract' "
                "(e.g. difflens.corpora.wiki_paragraphs())."
            )
        pid = p.get("id", i)
        if (pid if isinstance(pid, int) else i) in exclude_ids:
            continue
        if not str(p.get("extract", "")).strip():
            continue
        text = " ".join(
            str(p.get(k, "")) for k in ("topic", "title", "description", "extract")
        ).lower()
        words = re.findall(r"\w+", text)
        if (excl and not excl.isdisjoint(words)) or (excl_re is not None and excl_re.search(text)):
            continue
        hits = sum(1 for w in words if w in single)
        if multi_re is not None and hits < data.min_hits:
            hits += len(multi_re.findall(text))
        if hits >= data.min_hits:
            out.append(i)
            if data.max_paragraphs and len(out) >= data.max_paragraphs:
                break
    return out


def select_wiki_topic(
    paragraphs: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    spec: OrganismSpec,
    exclude_ids: set[int] | None = None,
) -> list[str]:
    """The ``extract`` texts of the paragraphs on the organism's topic (Domain organisms).

    ``paragraphs`` are dicts with ``extract`` and ``topic`` (e.g. ``difflens.corpora.
    wiki_paragraphs()`` or ``wiki_split("heldout")``; the raw ``{title: paragraph}`` mapping of
    ``summaries_en-us.json`` works too). A paragraph matches when its topic + title +
    description + extract (whichever are present) contain at least ``data.min_hits`` whole-word
    occurrences of ``data.keywords`` and none of ``data.exclude_keywords``; at most
    ``data.max_paragraphs`` are kept, in input order. ``exclude_ids`` are paragraph ``id``
    values to skip (list positions for dicts without an integer ``id``), e.g. the paragraphs used
    as D_pt.
    """
    paras = _paragraph_list(paragraphs)
    return [str(paras[i]["extract"]).strip() for i in wiki_topic_indices(paras, spec, exclude_ids)]
