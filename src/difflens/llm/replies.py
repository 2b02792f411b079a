"""Strict parsing of LLM replies: the helpers every prompt's parser is built from.

Each ``parse_*`` function elsewhere takes the reply text and either returns a value or raises
:class:`ValueError` with a message that states what was wrong *and* the required format, so it can
be passed straight to :meth:`difflens.llm.LLMClient.ask`, which shows that message to the model
when it re-asks. Parsers tolerate whitespace, letter case, Markdown emphasis and code fences, but
reject replies that are ambiguous or off-menu.
"""
from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

__all__ = ["parse_json_reply", "DECOR", "Messages", "chat_messages", "content_lines", "tagged", "clean_value", "must_end_with", "fmt_scale",
           "quote_token"]

Messages = list[dict[str, str]]


def chat_messages(system: str, user: str) -> Messages:
    """A system + user message list (both stripped)."""
    return [{"role": "system", "content": system.strip()}, {"role": "user", "content": user.strip()}]


_FENCE_LINE = re.compile(r"^\s*(```|~~~)[\w+-]*\s*$")
# Markdown decoration that may surround a tag or a value: bullets, quotes, headers, emphasis.
DECOR = "*_`>#- \t"


def content_lines(reply: str) -> list[str]:
    """Non-empty lines of ``reply`` with code-fence lines removed and whitespace stripped."""
    if not isinstance(reply, str):
        raise ValueError(f"expected the reply as text, got {type(reply).__name__}")
    out = []
    for line in reply.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _FENCE_LINE.match(line):
            continue
        s = line.strip()
        if s:
            out.append(s)
    return out


def tagged(lines: list[str], tag: str) -> list[tuple[int, re.Match[str]]]:
    """Lines that start (after Markdown decoration) with ``tag`` followed by ':' or '='.

    ``tag`` is a regex; its groups are available on the returned match, and the text after the
    separator is in the group named ``value`` (decoration stripped).
    """
    pat = re.compile(
        rf"^[{re.escape(DECOR)}]*(?:{tag})[*_`\s]*[:=][*_`\s]*(?P<value>.*?)[*_`\s]*$",
        re.IGNORECASE,
    )
    return [(i, m) for i, line in enumerate(lines) if (m := pat.match(line))]


def clean_value(value: str) -> str:
    """Strip quotes, brackets and trailing sentence punctuation around a short answer value."""
    v = value.strip().strip("\"'`[]()<>{}").strip()
    return v.rstrip(".!;,").strip()


def must_end_with(lines: list[str], answer_idx: Collection[int], fmt: str) -> None:
    if lines and (len(lines) - 1) not in answer_idx:
        raise ValueError(
            f"the reply continues after the answer ({lines[-1][:60]!r}); nothing may follow the "
            f"answer. Required format: {fmt}"
        )


def fmt_scale(s: float) -> str:
    return f"{float(s):g}"


def quote_token(tok: str) -> str:
    """A token shown unambiguously: JSON-quoted, so spaces and newlines stay visible."""
    return json.dumps(tok, ensure_ascii=False)


_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def parse_json_reply(text: str) -> Any:
    """Extract one JSON value from a model reply.

    Accepts a bare JSON document, JSON inside a Markdown code fence, or a JSON object/array
    embedded in prose. Raises :class:`ValueError` when no JSON can be found, or when the reply
    contains several *different* JSON values (an ambiguous reply must not be guessed at).
    """
    if not isinstance(text, str):
        raise ValueError(f"expected the reply text as a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise ValueError("the reply is empty; expected a JSON value")
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass

    def _distinct(values: list[Any]) -> list[Any]:
        out: list[Any] = []
        seen: set[str] = set()
        for v in values:
            k = json.dumps(v, sort_keys=True)
            if k not in seen:
                seen.add(k)
                out.append(v)
        return out

    fenced: list[Any] = []
    for match in _FENCE_RE.finditer(stripped):
        try:
            fenced.append(json.loads(match.group(2).strip()))
        except json.JSONDecodeError:
            continue
    fenced = _distinct(fenced)
    if len(fenced) == 1:
        return fenced[0]
    if len(fenced) > 1:
        raise ValueError(
            f"the reply contains {len(fenced)} different JSON blocks; reply with exactly one"
        )

    decoder = json.JSONDecoder()
    found: list[Any] = []
    i = 0
    while i < len(stripped):
        ch = stripped[i]
        if ch in "{[":
            try:
                value, end = decoder.raw_decode(stripped, i)
            except json.JSONDecodeError:
                i += 1
                continue
            if isinstance(value, (dict, list)):
                found.append(value)
            i = end
        else:
            i += 1
    found = _distinct(found)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError("no valid JSON object or array found in the reply; reply with JSON only")
    raise ValueError(
        f"the reply contains {len(found)} different JSON values; reply with exactly one"
    )
