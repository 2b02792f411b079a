"""Prompts and reply parsers for the paper's SDF recipe (App. C.5): document types -> ideas -> documents."""
from __future__ import annotations

import re
from collections.abc import Sequence

from ...llm.replies import Messages, chat_messages, content_lines, parse_json_reply

# ============================================================================================
# Synthetic document generation (paper App. C.5)
# ============================================================================================

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
