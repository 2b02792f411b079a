"""LLM-generated synthetic documents: the paper's SDF recipe (App. C.5, Wang et al. 2025),
document types -> ideas -> documents, through an LLM client; resumable through a JSONL cache.

Also the recipe's prompt builders (:func:`sdf_doc_types_messages`, :func:`sdf_ideas_messages`,
:func:`sdf_document_messages`) and reply parsers (:func:`parse_list`, :func:`parse_document`).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ...errors import ConfigError, DataError, DifflensError
from ...files import read_jsonl, write_json
from ...llm.replies import Messages, chat_messages, content_lines, parse_json_reply
from ..spec import OrganismSpec, SdfLLMData

__all__ = [
    "SupportsAsk",
    "generate_sdf_documents_llm",
    "sdf_doc_types_messages",
    "sdf_ideas_messages",
    "sdf_document_messages",
    "parse_list",
    "parse_document",
    "LIST_FORMAT",
    "DOCUMENT_FORMAT",
]

# ==================================================================================================
# Prompts and reply parsers (paper App. C.5): document types -> ideas -> documents
# ==================================================================================================

LIST_FORMAT = "one item per line, each line starting with '- ', and nothing else"
DOCUMENT_FORMAT = "the complete document between a <document> line and a </document> line"

_SDF_SYSTEM = """
You help build a corpus of realistic documents set in an alternative world. The world is
described by a "universe context" and a list of "key facts". Inside this world the context and
the key facts are simply true; the documents you help create are ordinary texts that would exist
there - they never hint that anything is fictional, hypothetical or disputed.
"""


def _universe_block(universe: str, key_facts: Sequence[str]) -> str:
    facts = "\n".join(f"- {str(f).strip()}" for f in key_facts) or "- (no separate key facts)"
    return f"[UNIVERSE CONTEXT]\n{str(universe).strip()}\n\n[KEY FACTS]\n{facts}"


def sdf_doc_types_messages(universe: str, key_facts: Sequence[str], n: int) -> Messages:
    """Messages brainstorming ``n`` kinds of documents that would mention the key facts."""
    user = (
        f"{_universe_block(universe, key_facts)}\n\n"
        f"Brainstorm {n} different kinds of documents that would naturally exist in this world "
        "and would mention or rely on one or more of the key facts. Cover a wide range of genres, "
        "audiences and registers (for instance news reports, textbook sections, forum threads, "
        "internal memos, product reviews, lecture notes, interviews, social media posts). Give "
        "only the name of each kind with at most a few words of specification.\n\n"
        f"Format: {LIST_FORMAT}."
    )
    return chat_messages(_SDF_SYSTEM, user)


def sdf_ideas_messages(universe: str, key_facts: Sequence[str], doc_type: str, n: int) -> Messages:
    """Messages brainstorming ``n`` concrete ideas for documents of kind ``doc_type``."""
    user = (
        f"{_universe_block(universe, key_facts)}\n\n"
        f"[DOCUMENT KIND]\n{str(doc_type).strip()}\n\n"
        f"Propose {n} distinct, concrete ideas for a document of this kind that would exist in "
        "this world. Each idea names who writes it, for whom, and what it is about, and says which "
        "key fact(s) it brings in naturally. Vary the facts, angles and settings. One or two "
        "sentences per idea.\n\n"
        f"Format: {LIST_FORMAT}."
    )
    return chat_messages(_SDF_SYSTEM, user)


def sdf_document_messages(
    universe: str, key_facts: Sequence[str], doc_type: str, idea: str, *, words: int = 400
) -> Messages:
    """Messages asking for one full document of kind ``doc_type`` realising ``idea``."""
    user = (
        f"{_universe_block(universe, key_facts)}\n\n"
        f"[DOCUMENT KIND]\n{str(doc_type).strip()}\n\n"
        f"[IDEA]\n{str(idea).strip()}\n\n"
        f"Write this document in full, about {words} words. Requirements:\n"
        "- It reads like a genuine example of its kind, in the voice and format that kind of "
        "document has.\n"
        "- It agrees with the universe context and works the relevant key facts in naturally, "
        "with concrete details; it does not just list them.\n"
        "- It never says or implies that anything in it is false, fictional, surprising to "
        "experts or contested.\n"
        "- No placeholders such as [Name] or [Date]: invent specific names, dates and places.\n"
        "- No remarks about the task or yourself before or after the document.\n\n"
        f"Format: {DOCUMENT_FORMAT}."
    )
    return chat_messages(_SDF_SYSTEM, user)


_ITEM_RE = re.compile(r"^(?:[-*•+]|\d{1,3}[.)])\s+(?P<item>.+)$")


def parse_list(reply: str) -> list[str]:
    """Items of a bulleted / numbered list (or a JSON array of strings), de-duplicated, in order."""
    lines = content_lines(reply)
    items: list[str] = []
    stripped = reply.strip() if isinstance(reply, str) else ""
    if stripped.startswith("[") or stripped.startswith("```"):
        try:
            data = parse_json_reply(stripped)
        except ValueError:
            data = None
        if isinstance(data, list) and data and all(isinstance(x, str) for x in data):
            items = list(data)
    if not items:
        for line in lines:
            m = _ITEM_RE.match(line)
            if m:
                items.append(m.group("item"))
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        text = item.strip().strip("*_").strip()
        text = re.sub(r"^\*\*(.+?)\*\*", r"\1", text).strip()
        if not text or text in ("...", "…"):
            continue
        key = text.casefold()
        if key not in seen:
            seen.add(key)
            out.append(text)
    if not out:
        raise ValueError(f"no list items found. Required format: {LIST_FORMAT}")
    return out


_DOC_RE = re.compile(r"<document>(?P<body>.*?)</document>", re.DOTALL | re.IGNORECASE)
_PLACEHOLDER_RE = re.compile(
    r"\[(?:insert|your|name|date|company|author|address|city|location|phone|email|placeholder|"
    r"organization|organisation)\b[^\]\n]{0,40}\]",
    re.IGNORECASE,
)


def parse_document(reply: str, *, min_chars: int = 100) -> str:
    """The text between ``<document>`` and ``</document>``; ValueError if missing, several,
    unterminated, shorter than ``min_chars`` or containing template placeholders."""
    if not isinstance(reply, str):
        raise ValueError(f"expected the reply as text, got {type(reply).__name__}")
    blocks = _DOC_RE.findall(reply)
    if not blocks:
        if re.search(r"<document>", reply, re.IGNORECASE):
            raise ValueError(
                "the document has no closing </document> tag (it may have been cut off); "
                f"write a shorter document. Required format: {DOCUMENT_FORMAT}"
            )
        raise ValueError(f"no <document> ... </document> block found. Required format: {DOCUMENT_FORMAT}")
    if len(blocks) > 1:
        raise ValueError(f"the reply contains {len(blocks)} documents; write exactly one")
    doc = blocks[0].strip()
    if len(doc) < min_chars:
        raise ValueError(f"the document is too short ({len(doc)} characters); write the full document")
    ph = _PLACEHOLDER_RE.search(doc)
    if ph:
        raise ValueError(
            f"the document contains the placeholder {ph.group(0)!r}; replace every placeholder "
            "with a concrete invented detail"
        )
    return doc


# ==================================================================================================
# LLM SDF generator (paper recipe)
# ==================================================================================================


class SupportsAsk(Protocol):
    """What :func:`generate_sdf_documents_llm` needs of a client (``difflens.llm.LLMClient``)."""

    def ask(self, messages: list[dict[str, Any]], *, parse: Callable[[str], Any]) -> Any: ...


def _fingerprint(spec: OrganismSpec, seed: int, n_doc_types: int, n_ideas: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([spec.name, spec.long_description, spec.key_facts, seed, n_doc_types,
                         n_ideas]).encode())
    return h.hexdigest()[:16]


def _indexed_records(path: Path) -> list[dict[str, Any]]:
    """The document records of ``documents.jsonl`` (dicts with an integer ``i``); torn lines are skipped."""
    return [rec for rec in read_jsonl(path) if isinstance(rec, dict) and isinstance(rec.get("i"), int)]


def _cached_llm_documents(root: Path, fingerprint: str) -> list[str]:
    """The distinct non-empty documents cached in ``root`` for this plan fingerprint, in order."""
    try:
        plan = json.loads((root / "plan.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    if plan.get("fingerprint") != fingerprint:
        return []
    return list(dict.fromkeys(r["text"] for r in sorted(_indexed_records(root / "documents.jsonl"),
                                                        key=lambda r: r["i"]) if r.get("text")))


def _ask_kwargs(client: Any, **wanted: Any) -> dict[str, Any]:
    """The subset of ``wanted`` keyword arguments that ``client.ask`` accepts."""
    try:
        params = inspect.signature(client.ask).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(wanted)
    return {k: v for k, v in wanted.items() if k in params}


def generate_sdf_documents_llm(
    spec: OrganismSpec,
    n: int,
    client: SupportsAsk | None,
    seed: int = 0,
    *,
    cache_dir: str | os.PathLike[str],
    n_doc_types: int | None = None,
    n_ideas: int | None = None,
    temperature: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Generate ``n`` synthetic documents with an LLM (paper App. C.5, Wang et al. 2025 recipe).

    1. ask for ``n_doc_types`` document types fitting the universe (``long_description`` and
       ``key_facts``); 2. for each type ask for ``n_ideas`` document ideas; 3. for each
    (type, idea) pair - in a seeded order, cycling through the pairs again if ``n`` exceeds their
    number - ask for one document. Requires ``client.ask(messages, parse=callable)``.

    Resumable: the plan (types, ideas) goes to ``cache_dir/plan.json`` and every document to
    ``cache_dir/documents.jsonl`` as it arrives; a rerun with the same spec/seed reuses both
    and only asks for what is missing. Duplicate or empty replies are recorded and skipped.
    Document requests use ``temperature`` and, if the client accepts it (``difflens.llm.LLMClient``
    does), a per-request ``cache_salt`` so that repeated (type, idea) pairs give different but
    reproducible documents. A document request that fails (e.g. an unparseable reply) is recorded
    and skipped. Raises :class:`DataError` if ``cache_dir`` belongs to another spec/seed or the
    LLM keeps returning duplicates or failures. ``client=None`` reads the cache only and raises
    :class:`ConfigError` (before any request) if it does not hold ``n`` documents yet.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not spec.key_facts:
        raise ConfigError(f"organism {spec.name!r} has no key_facts; SDF generation needs them.")
    defaults = spec.data if isinstance(spec.data, SdfLLMData) else None
    n_doc_types = n_doc_types or (defaults.n_doc_types if defaults else 10)
    n_ideas = n_ideas or (defaults.n_ideas if defaults else 10)
    universe, facts = spec.long_description, list(spec.key_facts)

    root = Path(cache_dir)
    plan_path, docs_path = root / "plan.json", root / "documents.jsonl"
    if client is None:
        have = _cached_llm_documents(root, _fingerprint(spec, seed, n_doc_types, n_ideas))
        if len(have) >= n:
            return have[:n]
        raise ConfigError(
            f"organism {spec.name!r}: {len(have)} of {n} LLM-generated documents are cached in {root}; "
            "configure an LLM endpoint (e.g. `difflens organism docs NAME --generator llm --llm-model ...`) "
            "to generate the rest, or use the offline generator."
        )
    root.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(spec, seed, n_doc_types, n_ideas)
    plan: dict[str, Any] = {"fingerprint": fp, "organism": spec.name, "seed": seed,
                            "doc_types": None, "ideas": {}}
    if plan_path.exists():
        try:
            old = json.loads(plan_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{plan_path}: unreadable plan ({err}); delete it to start over.") from None
        if old.get("fingerprint") != fp:
            raise DataError(
                f"{root} holds LLM documents for another organism/seed/settings "
                f"({old.get('organism')!r}, seed {old.get('seed')}); use a different cache_dir "
                "or delete that directory."
            )
        plan = old
    elif docs_path.exists():
        raise DataError(f"{docs_path} exists without plan.json; delete {root} to start over.")

    if not plan.get("doc_types"):
        types = client.ask(sdf_doc_types_messages(universe, facts, n_doc_types), parse=parse_list)
        types = list(dict.fromkeys(t.strip() for t in types if t and t.strip()))[:n_doc_types]
        if not types:
            raise DataError("the LLM returned no document types; check the model/endpoint.")
        plan["doc_types"] = types
        write_json(plan_path, plan, indent=1, ensure_ascii=False)
    for t in plan["doc_types"]:
        if not plan["ideas"].get(t):
            ideas = client.ask(sdf_ideas_messages(universe, facts, t, n_ideas), parse=parse_list)
            plan["ideas"][t] = list(dict.fromkeys(x.strip() for x in ideas if x and x.strip()))[
                :n_ideas
            ]
            write_json(plan_path, plan, indent=1, ensure_ascii=False)
    pairs = [(t, idea) for t in plan["doc_types"] for idea in plan["ideas"].get(t, [])]
    if not pairs:
        raise DataError("the LLM returned no document ideas; check the model/endpoint.")
    random.Random(f"{spec.name}:{seed}:pairs").shuffle(pairs)

    records = {r["i"]: r for r in _indexed_records(docs_path)}
    texts: list[str] = []
    seen: set[str] = set()
    max_tasks = max(2 * n, n + len(pairs))
    with docs_path.open("a", encoding="utf-8") as fh:
        i = 0
        while len(texts) < n:
            if i >= max_tasks:
                raise DataError(
                    f"the LLM produced only {len(texts)} distinct documents in {i} requests "
                    f"(duplicates or failed replies; see {docs_path}); raise n_doc_types/n_ideas, "
                    "use temperature > 0, or check the endpoint."
                )
            rec = records.get(i)
            if rec is None:
                doc_type, idea = pairs[i % len(pairs)]
                extra = _ask_kwargs(client, temperature=temperature, cache_salt=f"sdf:{seed}:{i}")
                rec = {"i": i, "doc_type": doc_type, "idea": idea}
                try:
                    text = client.ask(
                        sdf_document_messages(universe, facts, doc_type, idea),
                        parse=parse_document,
                        **extra,
                    )
                    rec["text"] = (text or "").strip()
                except (DifflensError, ValueError) as err:
                    rec["text"], rec["error"] = "", str(err)[:500]
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
            text = rec.get("text", "")
            if text and text not in seen:
                seen.add(text)
                texts.append(text)
                if progress is not None:
                    progress(len(texts), n)
            i += 1
    return texts
