"""Who plays the agent: an OpenAI-compatible endpoint (OpenRouter, OpenAI, vLLM, Ollama, llama.cpp,
`difflens serve`), a local transformers chat model in-process, or a person at the terminal.

Every provider answers :meth:`respond` with the reply text and, for the native protocol, tool
calls. Endpoint faults are retried by the shared LLM client; what still fails raises
:class:`~difflens.errors.LLMError`, which ends the episode with an error state.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from ..llm.types import TokenUsage, ToolCall

__all__ = ["ProviderReply", "AgentProvider", "EndpointAgent", "LocalAgent", "ManualAgent"]


@dataclass
class ProviderReply:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)


class AgentProvider(Protocol):
    name: str
    model: str | None
    supports_tools: bool

    def respond(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *,
                salt: str) -> ProviderReply: ...


@dataclass
class EndpointAgent:
    """The agent behind an OpenAI-compatible endpoint (the shared :class:`~difflens.llm.LLMClient`:
    retries with backoff, on-disk cache keyed by the conversation and ``salt``, usage accounting)."""

    client: Any
    temperature: float = 0.7
    max_tokens: int | None = 2000
    name: str = "endpoint"
    supports_tools: bool = True

    @property
    def model(self) -> str | None:
        return getattr(getattr(self.client, "config", None), "model", None)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Dollar cost of these tokens at the endpoint's configured prices (None when unpriced)."""
        cfg = getattr(self.client, "config", None)
        pin, pout = getattr(cfg, "price_in_per_mtok", None), getattr(cfg, "price_out_per_mtok", None)
        if pin is None or pout is None:
            return None
        return (prompt_tokens * pin + completion_tokens * pout) / 1e6

    def respond(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *,
                salt: str) -> ProviderReply:
        r = self.client.chat(messages, temperature=self.temperature, max_tokens=self.max_tokens, tools=tools,
                             cache_salt=salt)
        return ProviderReply(r.text or "", list(r.tool_calls), r.usage)


@dataclass
class LocalAgent:
    """A transformers chat model in-process (text protocol): ``spec`` is anything
    :func:`difflens.models.sources.load_model` accepts (embedded name, local directory, …)."""

    spec: str
    max_new_tokens: int = 400
    temperature: float = 0.7
    name: str = "local"
    supports_tools: bool = False
    _lm: Any = None

    @property
    def model(self) -> str | None:
        return self.spec

    def respond(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *,
                salt: str) -> ProviderReply:
        import torch

        from ..models.sources import load_model

        if self._lm is None:
            self._lm = load_model(self.spec)
        tok, model = self._lm.tokenizer, self._lm.model
        msgs = [{"role": m["role"] if m["role"] in ("system", "user", "assistant") else "user",
                 "content": m.get("content") or ""} for m in messages]

        def encode(ms: list[dict[str, str]]) -> Any:
            text = tok.apply_chat_template(ms, tokenize=False, add_generation_prompt=True) \
                if getattr(tok, "chat_template", None) else "\n".join(m["content"] for m in ms) + "\n"
            return tok(text, return_tensors="pt", add_special_tokens=not getattr(tok, "chat_template", None))

        limit = int(getattr(model.config, "max_position_embeddings", 0) or 8192) - self.max_new_tokens
        ids = encode(msgs)
        while ids["input_ids"].shape[1] > limit and len(msgs) > 3:
            # too long for the model: keep the system prompt, the overview and the most recent turns
            msgs = msgs[:2] + msgs[3:]
            ids = encode(msgs)
        torch.manual_seed(int(hashlib.sha256(salt.encode()).hexdigest()[:8], 16))
        with torch.no_grad():
            out = model.generate(**ids.to(model.device), do_sample=self.temperature > 0,
                                 temperature=max(self.temperature, 1e-5), max_new_tokens=self.max_new_tokens,
                                 pad_token_id=tok.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        return ProviderReply(tok.decode(new, skip_special_tokens=True),
                             usage=TokenUsage(prompt_tokens=int(ids["input_ids"].shape[1]),
                                              completion_tokens=int(new.shape[0])))


@dataclass
class ManualAgent:
    """A person plays the agent: each message is printed to ``out``; the reply is read from ``inp``
    up to and including the first line that starts with ``CALL(`` or ``FINAL(`` (or end of input,
    which counts as an empty reply)."""

    inp: TextIO = field(default_factory=lambda: sys.stdin)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    name: str = "manual"
    model: str | None = None
    supports_tools: bool = False
    _shown: int = 0

    def respond(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *,
                salt: str) -> ProviderReply:
        for m in messages[self._shown:]:
            if m["role"] == "assistant":
                continue
            self.out.write(f"\n===== {m['role'].upper()} =====\n{m.get('content') or ''}\n")
        self._shown = len(messages) + 1  # the reply we are about to read is ours
        self.out.write("\n===== YOUR REPLY (end with a CALL(...) or FINAL(...) line) =====\n")
        self.out.flush()
        lines: list[str] = []
        for line in self.inp:
            lines.append(line.rstrip("\n"))
            if line.lstrip().startswith(("CALL(", "FINAL(")):
                break
        return ProviderReply("\n".join(lines))
