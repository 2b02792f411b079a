"""The on-disk cache of LLM replies.

Keyed by the sha256 of everything that determines the reply (endpoint, model, messages,
temperature, max_tokens, tools, seed and a free ``cache_salt``); see :func:`cache_key`. A hit
makes no HTTP request. To draw N *distinct* samples at temperature > 0 and still cache them, pass
``cache_salt=i`` for sample ``i``.

One reply per file, ``{directory}/{key[:2]}/{key}.json``, written atomically (temporary file,
then rename), so one cache may be shared by threads and processes. The cache never sees the API
key: whoever builds a :class:`ReplyCache` passes a ``scrub`` function that every record goes
through before it is written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import LLMError
from ..rundir.layout import home
from .types import LLMReply

__all__ = ["ReplyCache", "cache_key"]

log = logging.getLogger(__name__)

#: Bumped when the cache file layout or key derivation changes.
_CACHE_VERSION = 1


def cache_key(
    base_url: str,
    model: str,
    messages: list[dict[str, Any]],
    *,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    tools: list[dict[str, Any]] | None = None,
    seed: int | None = None,
    cache_salt: str | int | None = None,
) -> str:
    """The sha256 hex digest under which a reply to this request is cached."""
    payload = {
        "v": _CACHE_VERSION,
        "base_url": base_url,
        "model": model,
        "messages": messages,
        "temperature": float(temperature),
        "max_tokens": max_tokens,
        "tools": tools,
        "seed": seed,
        "cache_salt": cache_salt,
    }
    try:
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise LLMError(
            f"messages/tools must be JSON-serialisable to be sent and cached: {exc}"
        ) from exc
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ReplyCache:
    """Cached replies of one endpoint and model, one JSON file per request key.

    ``directory`` defaults to the ``llm_cache`` folder under the difflens home and is created
    here (:class:`~difflens.errors.LLMError` when that fails). ``scrub`` is applied to every
    record before it is written; the client passes one that removes its API key.
    """

    def __init__(
        self,
        directory: Path | None,
        *,
        base_url: str,
        model: str,
        scrub: Callable[[str], str],
    ) -> None:
        self.directory = Path(directory) if directory else home().llm_cache
        self.base_url = base_url
        self.model = model
        self._scrub = scrub
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LLMError(
                f"cannot create the LLM cache directory {self.directory}: {exc}. "
                "Set cache_dir to a writable folder or cache=False."
            ) from exc

    def __repr__(self) -> str:
        return f"ReplyCache({str(self.directory)!r}, base_url={self.base_url!r}, model={self.model!r})"

    def key(self, messages: list[dict[str, Any]], **request: Any) -> str:
        """:func:`cache_key` for this cache's endpoint and model (``request``: its keyword arguments)."""
        return cache_key(self.base_url, self.model, messages, **request)

    def path(self, key: str) -> Path:
        """The file that holds (or would hold) the reply cached under ``key``."""
        return self.directory / key[:2] / f"{key}.json"

    def read(self, key: str) -> LLMReply | None:
        """The reply cached under ``key`` (marked ``cached=True``), or None on a miss.

        An unreadable entry is logged and treated as a miss.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            reply = LLMReply.model_validate(data["reply"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable LLM cache entry %s (%s)", path, exc)
            return None
        return reply.model_copy(update={"cached": True})

    def write(self, key: str, reply: LLMReply) -> None:
        """Store ``reply`` under ``key`` atomically; a failure is logged, never raised."""
        path = self.path(key)
        record = {
            "version": _CACHE_VERSION,
            "base_url": self.base_url,
            "model": self.model,
            "created": time.time(),
            "reply": reply.model_dump(exclude={"cached"}),
        }
        text = self._scrub(json.dumps(record, ensure_ascii=False, indent=1))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not write LLM cache entry %s (%s)", path, exc)

    def drop(self, key: str) -> None:
        """Forget the reply cached under ``key`` (no error when there is none)."""
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError:
            pass
