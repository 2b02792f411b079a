"""Text formatting shared by the page, its charts and the terminal summary: HTML escaping, tokens
with visible whitespace, and compact numbers. No imports from the rest of :mod:`difflens.report`."""
from __future__ import annotations

import html
import math
from typing import Any, Iterable, Sequence

_WS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def show_token(tok: str) -> str:
    """A token with visible whitespace (␣ ↵ ⇥ ␍), control characters as \\xNN; '∅' for empty."""
    if tok == "":
        return "∅"
    out = []
    for ch in tok:
        if ch in _WS:
            out.append(_WS[ch])
        elif ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


#: The markers :func:`show_token` puts in place of whitespace.
WS_MARKS = frozenset(_WS.values())


def fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or x is None:
        return "—" if x is None else str(x).lower()
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}"
    return str(x)


def fmt_scale(x: float) -> str:
    return f"{x:g}"


def html_table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """An HTML table from already-escaped header and cell strings."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def tok_html(tok: str) -> str:
    """HTML of a token: escaped, with its whitespace markers (see :func:`show_token`) in a lighter colour."""
    return "".join(f'<span class="ws">{c}</span>' if c in WS_MARKS else esc(c) for c in show_token(tok))


def hint_html(text: str) -> str:
    """A plain-text hint with `backticked` commands: escaped, each command in ``<code>``."""
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans
        return esc(text)
    return "".join(f"<code>{esc(p)}</code>" if i % 2 else esc(p) for i, p in enumerate(parts))
