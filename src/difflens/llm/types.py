"""What the LLM client returns: replies (:class:`LLMReply` with its :class:`ToolCall` and
:class:`TokenUsage`) and a client's running totals (:class:`LLMUsage`)."""
from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["ToolCall", "TokenUsage", "LLMReply", "LLMUsage"]


class ToolCall(BaseModel):
    """One function call requested by the model."""

    id: str = ""
    name: str
    arguments: str = Field("", description="The arguments as the JSON string the model produced.")

    def parsed_arguments(self) -> Any:
        """The arguments decoded as JSON; raises ValueError when they are not valid JSON."""
        if not self.arguments.strip():
            return {}
        return json.loads(self.arguments)


class TokenUsage(BaseModel):
    """Token counts that the endpoint reported for one reply (0 where it reported none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class LLMReply(BaseModel):
    """A chat completion reduced to what difflens uses."""

    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: TokenUsage = Field(default_factory=TokenUsage)
    finish_reason: str | None = None
    model: str | None = None
    cached: bool = False


class LLMUsage(BaseModel):
    """Running totals for one :class:`~difflens.llm.LLMClient`.

    ``requests`` counts HTTP requests actually sent (every retry attempt included); ``calls``
    counts :meth:`~difflens.llm.LLMClient.chat` invocations (cache hits included); tokens and
    cost count only replies that came from the endpoint, not from the cache.
    """

    calls: int = 0
    requests: int = 0
    retries: int = 0
    failed_requests: int = 0
    cache_hits: int = 0
    reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
