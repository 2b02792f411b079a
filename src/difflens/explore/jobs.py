"""What the model service works with: a request's limits and errors, the model it names
(:class:`ModelSpec`), and a :class:`Job` streaming its events to the request's asyncio loop; a chat
completion's stream (:class:`_ChatEmitter`: text deltas as tokens arrive, the ``done`` summary),
shared by every generation path of :mod:`difflens.explore.service`."""
from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

__all__ = ["Limits", "ModelSpec", "Job", "QueueFull", "BadRequest", "UnknownModel", "AMPLIFIED", "DEFAULT_BETA",
           "BETA_MAX", "ALPHA_MAX"]

AMPLIFIED = "amplified"
DEFAULT_BETA = 1.0  # β when the run has no amplification result (the method's grid starts at 0.5 … 8)
BETA_MAX = 64.0
ALPHA_MAX = 1000.0


@dataclass
class Limits:
    """What one request may ask for, and how many may wait."""

    max_tokens: int = 512  # most new tokens per completion
    default_max_tokens: int = 256
    max_messages: int = 64
    max_message_chars: int = 16_000  # per message
    max_prompt_tokens: int = 4096  # the rendered conversation
    max_body_bytes: int = 512 * 1024  # a request body beyond this is refused (413) before it is parsed
    max_queue: int = 64  # jobs waiting for the worker (the running one not counted); beyond: 429
    max_text_chars: int = 32_000  # heat-map text
    max_heatmap_tokens: int = 1024
    max_batch: int = 64  # completions generated together in one batch (HF) or engine batch (vLLM)


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the generation queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class BadRequest(ValueError):
    """A request field the service cannot honour (HTTP 400)."""


class UnknownModel(KeyError):
    """A model name the service does not serve (HTTP 404)."""

    def __str__(self) -> str:  # KeyError quotes its argument
        return str(self.args[0]) if self.args else "unknown model"


@dataclass(frozen=True)
class ModelSpec:
    """One resolved model of a request: which side generates, and with which intervention."""

    name: str
    side: str  # "base" or "ft"
    position: int | None = None  # steered: δ̄ of this position
    alpha: float | None = None
    beta: float | None = None  # amplified

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.name}
        if self.position is not None:
            out.update(position=self.position, alpha=self.alpha)
        if self.beta is not None:
            out["beta"] = self.beta
        return out


class Job:
    """One unit of work for the worker thread, streaming ``(kind, payload)`` events to the asyncio loop
    of the request that submitted it. Kinds: ``token`` (text delta, token id), ``done`` (a dict),
    ``error`` (a message); the last event is ``done`` or ``error``."""

    def __init__(self, work: Callable[["Job"], Any], loop: asyncio.AbstractEventLoop | None = None):
        self.work = work
        self.loop = loop
        self.cancelled = threading.Event()
        self.events: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self.sync: queue.Queue = queue.Queue()  # the same events, for callers without a loop (tests, CLI)
        self.enqueued = time.perf_counter()
        self.chat: "_ChatEmitter | None" = None  # a chat completion's request and stream (chat_job sets it)

    def emit(self, kind: str, payload: Any = None) -> None:
        if self.loop is None:
            self.sync.put((kind, payload))
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))  # type: ignore[union-attr]
        except RuntimeError:  # the request's loop is gone: nobody listens any more
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()

    async def stream(self) -> Any:
        """The events as they come (an async iterator ending after ``done`` or ``error``)."""
        assert self.events is not None
        while True:
            kind, payload = await self.events.get()
            yield kind, payload
            if kind in ("done", "error"):
                return

    def wait(self, timeout: float | None = None) -> tuple[str, Any]:
        """Block until the job ends (loop-less jobs): the final ``(kind, payload)``."""
        while True:
            kind, payload = self.sync.get(timeout=timeout)
            if kind in ("done", "error"):
                return kind, payload


class _Detokenizer:
    """Text deltas of a growing token sequence: each new token's text once it decodes cleanly (an
    incomplete UTF-8 sequence waits for the token that finishes it); the deltas concatenate to the
    decoded whole."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def _text(self) -> str:
        return self.tok.decode(self.ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self._text()
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def finish(self) -> str:
        text = self._text()
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent += delta
        return delta


class _ChatEmitter:
    """One completion's stream: the request (model, prompt ids, sampling), its text deltas as tokens
    arrive, and the ``done`` event's summary — shared by the HF path and the vLLM batcher."""

    def __init__(self, job: Job, tokenizer: Any, spec: ModelSpec, ids: Sequence[int], *, max_tokens: int,
                 temperature: float, seed: int):
        self.job, self.spec, self.ids = job, spec, list(ids)
        self.max_tokens, self.temperature, self.seed = int(max_tokens), float(temperature), int(seed)
        self.detok = _Detokenizer(tokenizer)
        self.first: float | None = None
        self.n = 0
        self.t0 = time.perf_counter()

    def token(self, token: int, is_eos: bool) -> bool:
        """Hand one drawn token on; False once the stream is over (end of sequence, or cancelled)."""
        if self.job.cancelled.is_set():
            return False
        self.n += 1
        if self.first is None:
            self.first = time.perf_counter() - self.job.enqueued
        if is_eos:
            return False
        delta = self.detok.push(token)
        if delta:
            self.job.emit("token", (delta, token))
        return True

    def done(self, finish: str, *, backend: str = "hf", batch: int = 1) -> None:
        tail = self.detok.finish()
        if tail:
            self.job.emit("token", (tail, None))
        if self.job.cancelled.is_set():
            finish = "cancelled"
        self.job.emit("done", {"finish_reason": finish, "prompt_tokens": len(self.ids), "completion_tokens": self.n,
                               "seed": self.seed, "temperature": self.temperature, "text": self.detok.sent,
                               "first_token_s": self.first, "seconds": time.perf_counter() - self.t0,
                               "backend": backend, "batch": batch, **self.spec.describe()})


def _message_text(content: Any) -> str:
    """A message's content: a string, or OpenAI's list of parts (text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:
                raise BadRequest("message content parts must be {'type': 'text', 'text': ...}")
        return "".join(parts)
    raise BadRequest("message content must be a string or a list of text parts")


def _number(value: Any, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise BadRequest(f"'{name}' must be a finite number")
    if not lo <= float(value) <= hi:
        raise BadRequest(f"'{name}' must be between {lo:g} and {hi:g}, got {value}")
    return float(value)
