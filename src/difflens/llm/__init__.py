"""LLM access through any OpenAI-compatible endpoint: the client (retries, re-asking, usage), its
on-disk reply cache, and the strict reply-parsing helpers every prompt's parser is built from."""
from __future__ import annotations

from .client import LLMClient
from .config import LLMConfig
from .replies import parse_json_reply
from .types import LLMReply, LLMUsage, TokenUsage, ToolCall

__all__ = ["LLMClient", "LLMConfig", "LLMReply", "LLMUsage", "TokenUsage", "ToolCall", "parse_json_reply",
           "client_for"]


def client_for(model: str, base_url: str, api_key_env: str) -> LLMClient:
    """The client for one endpoint (the key is read from the environment variable ``api_key_env``)."""
    return LLMClient(LLMConfig(model=model, base_url=base_url, api_key_env=api_key_env))
