"""OpenAI-compatible chat client used by every LLM-backed part of difflens.

One small client serves the graders (coherence, Patchscope scale, token relevance, hypothesis
grading), the synthetic-document generator and the interpretability agent. It talks to any
endpoint that implements ``POST {base_url}/chat/completions``: OpenRouter (the default), OpenAI,
vLLM, Ollama or llama.cpp's server.

What it adds on top of the ``openai`` SDK:

* **Bounded, testable retries.** The SDK's own retrying is switched off (``max_retries=0``);
  :class:`LLMClient` retries HTTP 429, 5xx, timeouts, connection errors and unparseable HTTP
  bodies itself, with exponential backoff and jitter, at most ``LLMConfig.max_retries`` times.
  Other HTTP errors (400, 401, 403, 404, 422) fail at once with a message that says what to fix.
* **Re-asking.** :meth:`LLMClient.ask` runs a parser on the reply and, when the parser raises
  :class:`ValueError`, shows the model its reply and what was wrong, up to
  ``LLMConfig.max_reasks`` times.
* **An on-disk reply cache** (:class:`~difflens.llm.cache.ReplyCache`). Keyed by the sha256 of
  everything that determines the reply (endpoint, model, messages, temperature, max_tokens,
  tools, seed and a free ``cache_salt``). A hit makes no HTTP request. To draw N *distinct*
  samples at temperature > 0 and still cache them, pass ``cache_salt=i`` for sample ``i``.
* **Usage accounting** (:attr:`LLMClient.usage`, :meth:`LLMClient.usage_summary`).

The config lives in :mod:`difflens.llm.config`, the reply and usage models in
:mod:`difflens.llm.types`.

API keys. ``LLMConfig.api_key_env`` holds the *name* of an environment variable, never the key.
The key is read once when the client is built and is never stored in the config, in the cache,
in logs, in error messages or in results. Rules:

* ``api_key_env=""`` - the endpoint needs no key (local vLLM / Ollama / llama.cpp);
  a placeholder key is sent.
* the named variable is **unset** - :class:`~difflens.errors.LLMError` at construction, so a run
  fails before doing any work.
* the named variable is set to an **empty** string - accepted as "no key needed" (placeholder sent).
"""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from typing import Any, Callable, TypeVar

from ..errors import LLMError
from .cache import ReplyCache, cache_key
from .config import _MAX_RETRY_AFTER_S, _PLACEHOLDER_KEY, _RETRY_STATUSES, LLMConfig
from .types import LLMReply, LLMUsage, TokenUsage, ToolCall

__all__ = ["LLMClient"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Transient(Exception):
    """A failure worth retrying; ``str()`` is a key-free description."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LLMClient:
    """Chat with an OpenAI-compatible endpoint, with retries, re-asks, caching and accounting.

    Thread-safe: one client may be shared by worker threads (usage counters are locked; cache
    files are written atomically).
    """

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        env = config.api_key_env
        if env:
            if env not in os.environ:
                raise LLMError(
                    f"environment variable {env} is not set, so no API key is available for "
                    f"{config.base_url}. Export it (export {env}=...), point api_key_env at the "
                    "variable that holds your key, or set api_key_env to \"\" for a local "
                    "endpoint that needs no key."
                )
            key = os.environ[env]
        else:
            key = ""
        # Held privately for the SDK and for scrubbing; never serialised.
        self.__key = key.strip()
        self._cache: ReplyCache | None = None
        if config.cache:
            self._cache = ReplyCache(
                config.cache_dir, base_url=config.base_url, model=config.model, scrub=self._scrub
            )
        self._lock = threading.Lock()
        self._usage = LLMUsage(cost_usd=self._cost(0, 0))
        self._sdk = self._make_sdk()

    # -- construction helpers ---------------------------------------------------------------

    def _make_sdk(self) -> Any:
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - openai is a hard dependency
            raise LLMError(
                "the 'openai' package is required for LLM graders and agents; "
                "install difflens with its dependencies (pip install -e .)"
            ) from exc
        return openai.OpenAI(
            api_key=self.__key or _PLACEHOLDER_KEY,
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,
        )

    def __repr__(self) -> str:
        c = self.config
        return f"LLMClient(base_url={c.base_url!r}, model={c.model!r}, api_key_env={c.api_key_env!r})"

    # -- public API ---------------------------------------------------------------------------

    @property
    def usage(self) -> LLMUsage:
        """A snapshot of this client's running totals."""
        with self._lock:
            return self._usage.model_copy()

    def usage_summary(self) -> dict[str, Any]:
        """Usage as a JSON-ready dict for run results (endpoint and model, never the key)."""
        u = self.usage
        return {
            "base_url": self.config.base_url,
            "model": self.config.model,
            **u.model_dump(),
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "price_in_per_mtok": self.config.price_in_per_mtok,
            "price_out_per_mtok": self.config.price_out_per_mtok,
        }

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        seed: int | None = None,
        cache_salt: str | int | None = None,
    ) -> LLMReply:
        """Send ``messages`` and return the reply.

        ``seed`` is forwarded to the endpoint (where supported) and is part of the cache key;
        ``cache_salt`` is only part of the cache key - use it to cache several distinct samples of
        the same prompt (e.g. ``cache_salt=i`` for sample ``i``). Raises
        :class:`~difflens.errors.LLMError` when the endpoint fails after all retries.
        """
        reply, _ = self._chat(
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            tools=tools,
            seed=seed,
            cache_salt=cache_salt,
            store=True,
        )
        return reply

    def ask(
        self,
        messages: list[dict[str, Any]],
        *,
        parse: Callable[[str], T],
        temperature: float = 0.0,
        max_tokens: int | None = None,
        seed: int | None = None,
        cache_salt: str | int | None = None,
        format_hint: str | None = None,
    ) -> T:
        """Chat, then ``parse`` the reply text; re-ask when ``parse`` raises ValueError.

        On a parse failure the bad reply and a short user message stating the problem (the
        ValueError's text, plus ``format_hint`` if given) are appended and the model is asked
        again, up to ``config.max_reasks`` times. Replies that fail to parse are not cached, so a
        rerun gets a fresh answer. Raises :class:`~difflens.errors.LLMError` (quoting the last
        reply) when every attempt fails to parse.
        """
        convo = [dict(m) for m in messages]
        last_text = ""
        last_error = ""
        for attempt in range(self.config.max_reasks + 1):
            if attempt:
                with self._lock:
                    self._usage.reasks += 1
            reply, key = self._chat(
                convo,
                temperature=temperature,
                max_tokens=max_tokens,
                tools=None,
                seed=seed,
                cache_salt=cache_salt,
                store=False,
            )
            last_text = reply.text
            try:
                value = parse(reply.text)
            except ValueError as exc:
                last_error = str(exc) or exc.__class__.__name__
                log.info("LLM reply from %s did not parse (%s); re-asking", self.config.model, last_error)
                if self._cache is not None and key is not None and reply.cached:
                    self._cache.drop(key)
                convo = convo + [
                    {"role": "assistant", "content": reply.text},
                    {"role": "user", "content": self._reask_text(last_error, format_hint)},
                ]
                continue
            if self._cache is not None and key is not None and not reply.cached:
                self._cache.write(key, reply)
            return value
        shown = last_text if len(last_text) <= 1500 else last_text[:1500] + " [...truncated]"
        raise LLMError(
            f"{self.config.model} at {self.config.base_url} gave no usable reply after "
            f"{self.config.max_reasks + 1} attempt(s) ({self.config.max_reasks} re-ask(s)). "
            f"Last problem: {last_error}. Last reply: {shown!r}. Try a stronger model, or raise "
            "max_reasks."
        )

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _reask_text(error: str, format_hint: str | None) -> str:
        text = (
            f"Your previous reply could not be used: {error}. "
            "Please answer again and follow the required output format exactly."
        )
        if format_hint:
            text += f" Required format: {format_hint}"
        return text

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        pin, pout = self.config.price_in_per_mtok, self.config.price_out_per_mtok
        if pin is None and pout is None:
            return None
        return (prompt_tokens * (pin or 0.0) + completion_tokens * (pout or 0.0)) / 1e6

    def _scrub(self, text: str) -> str:
        """Remove the API key from any text that might be shown or stored."""
        if self.__key and len(self.__key) >= 4:
            text = text.replace(self.__key, "***")
        return text

    def cache_key(self, messages: list[dict[str, Any]], **request: Any) -> str:
        """The sha256 hex digest under which a reply to this request is cached (see
        :func:`difflens.llm.cache.cache_key` for the request's keyword arguments)."""
        return cache_key(self.config.base_url, self.config.model, messages, **request)

    def _chat(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float,
        max_tokens: int | None,
        tools: list[dict[str, Any]] | None,
        seed: int | None,
        cache_salt: str | int | None,
        store: bool,
    ) -> tuple[LLMReply, str | None]:
        if not isinstance(messages, list) or not messages:
            raise LLMError("chat() needs a non-empty list of {'role': ..., 'content': ...} messages")
        with self._lock:
            self._usage.calls += 1
        key: str | None = None
        if self._cache is not None:
            key = self.cache_key(
                messages,
                temperature=temperature,
                max_tokens=max_tokens,
                tools=tools,
                seed=seed,
                cache_salt=cache_salt,
            )
            hit = self._cache.read(key)
            if hit is not None:
                with self._lock:
                    self._usage.cache_hits += 1
                return hit, key

        reply = self._request_with_retries(messages, temperature, max_tokens, tools, seed)
        with self._lock:
            u = self._usage
            u.prompt_tokens += reply.usage.prompt_tokens
            u.completion_tokens += reply.usage.completion_tokens
            u.cost_usd = self._cost(u.prompt_tokens, u.completion_tokens)
        if store and self._cache is not None and key is not None:
            self._cache.write(key, reply)
        return reply, key

    def _request_with_retries(
        self,
        messages: list[dict[str, Any]],
        temperature: float,
        max_tokens: int | None,
        tools: list[dict[str, Any]] | None,
        seed: int | None,
    ) -> LLMReply:
        cfg = self.config
        attempts = cfg.max_retries + 1
        last: _Transient | None = None
        for attempt in range(attempts):
            if attempt:
                delay = cfg.backoff_s * (2 ** (attempt - 1)) * (1.0 + 0.5 * random.random())
                if last is not None and last.retry_after is not None:
                    delay = max(delay, min(last.retry_after, _MAX_RETRY_AFTER_S))
                with self._lock:
                    self._usage.retries += 1
                log.warning(
                    "LLM request to %s failed (%s); retry %d/%d in %.2fs",
                    cfg.base_url, last, attempt, cfg.max_retries, delay,
                )
                time.sleep(delay)
            with self._lock:
                self._usage.requests += 1
            try:
                return self._request_once(messages, temperature, max_tokens, tools, seed)
            except _Transient as exc:
                with self._lock:
                    self._usage.failed_requests += 1
                last = exc
            except LLMError:
                with self._lock:
                    self._usage.failed_requests += 1
                raise
        assert last is not None
        hint = (
            " Is the server running and is base_url correct?"
            if "connect" in str(last).lower()
            else " Try again later, or raise max_retries / timeout_s."
        )
        raise LLMError(
            f"LLM endpoint {cfg.base_url}/chat/completions (model {cfg.model}) failed "
            f"{attempts} time(s); last error: {last}.{hint}"
        )

    def _request_once(
        self,
        messages: list[dict[str, Any]],
        temperature: float,
        max_tokens: int | None,
        tools: list[dict[str, Any]] | None,
        seed: int | None,
    ) -> LLMReply:
        import openai

        kwargs: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": temperature,
        }
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if tools:
            kwargs["tools"] = tools
        if seed is not None:
            kwargs["seed"] = seed
        try:
            raw = self._sdk.chat.completions.with_raw_response.create(**kwargs)
            body_text = raw.text
            status = raw.status_code
        except openai.APITimeoutError as exc:
            raise _Transient(f"timed out after {self.config.timeout_s:g}s") from exc
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc.__context__
            detail = f"{type(cause).__name__}: {cause}" if cause else str(exc)
            raise _Transient(self._scrub(f"could not connect ({detail})")) from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            msg = self._scrub(_error_message(exc.body) or _short(exc.response.text))
            if status >= 500 or status in _RETRY_STATUSES:
                raise _Transient(
                    f"HTTP {status}: {msg}", retry_after=_retry_after(exc.response.headers)
                ) from exc
            raise LLMError(self._status_advice(status, msg)) from exc
        except openai.OpenAIError as exc:
            raise _Transient(self._scrub(f"{type(exc).__name__}: {exc}")) from exc
        return self._parse_body(body_text, status)

    def _status_advice(self, status: int, msg: str) -> str:
        cfg = self.config
        where = f"LLM endpoint {cfg.base_url}/chat/completions (model {cfg.model})"
        if status in (401, 403):
            what = (
                f"the endpoint rejected the API key (HTTP {status}: {msg}). Check the key in "
                f"${cfg.api_key_env}" if cfg.api_key_env else
                f"the endpoint requires authentication (HTTP {status}: {msg}); set api_key_env "
                "to the env var that holds your key"
            )
        elif status == 404:
            what = (
                f"HTTP 404: {msg}. Check that base_url ends in the API root (e.g. '/v1' or "
                "'/api/v1') and that the model name exists on this endpoint"
            )
        else:
            what = f"the request was rejected with HTTP {status}: {msg}. Check model name and parameters"
        return f"{where}: {what}."

    def _parse_body(self, body_text: str, status: int) -> LLMReply:
        try:
            body = json.loads(body_text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise _Transient(
                f"HTTP {status} with a body that is not JSON: {self._scrub(_short(body_text))!r}"
            ) from exc
        if not isinstance(body, dict):
            raise _Transient(f"HTTP {status} with an unexpected JSON body: {_short(body_text)!r}")
        if body.get("error") and not body.get("choices"):
            # Some gateways (OpenRouter) report upstream failures inside a 200 body.
            msg = self._scrub(_error_message(body) or _short(body_text))
            code = body["error"].get("code") if isinstance(body["error"], dict) else None
            if isinstance(code, int) and 400 <= code < 500 and code not in _RETRY_STATUSES:
                raise LLMError(self._status_advice(code, msg))
            raise _Transient(f"error in response body: {msg}")
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Transient(f"response has no choices: {self._scrub(_short(body_text))!r}")
        choice = choices[0]
        message = choice.get("message") or {}
        if not isinstance(message, dict):
            raise _Transient(f"response choice has no message: {_short(body_text)!r}")
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
        text = content if isinstance(content, str) else ""
        calls: list[ToolCall] = []
        for tc in message.get("tool_calls") or []:
            if not isinstance(tc, dict):
                continue
            fn = tc.get("function") or {}
            name = fn.get("name") if isinstance(fn, dict) else None
            if not name:
                continue
            args = fn.get("arguments", "")
            if not isinstance(args, str):
                args = json.dumps(args)
            calls.append(ToolCall(id=str(tc.get("id") or ""), name=str(name), arguments=args))
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return LLMReply(
            text=text,
            tool_calls=calls,
            usage=TokenUsage(
                prompt_tokens=_as_int(usage.get("prompt_tokens")),
                completion_tokens=_as_int(usage.get("completion_tokens")),
            ),
            finish_reason=choice.get("finish_reason"),
            model=body.get("model") if isinstance(body.get("model"), str) else None,
            cached=False,
        )


def _as_int(v: Any) -> int:
    try:
        return max(0, int(v))
    except (TypeError, ValueError):
        return 0


def _short(text: Any, n: int = 300) -> str:
    s = str(text) if text is not None else ""
    s = " ".join(s.split())
    return s if len(s) <= n else s[:n] + "..."


def _error_message(body: Any) -> str:
    """The human-readable message of an OpenAI-style error body, if any."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if msg:
                return _short(msg)
        elif isinstance(err, str):
            return _short(err)
    if isinstance(body, str):
        return _short(body)
    return ""


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("retry-after")
    except Exception:  # noqa: BLE001 - header access must never mask the real error
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None

