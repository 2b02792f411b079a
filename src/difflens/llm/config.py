"""Where and how to reach an OpenAI-compatible chat endpoint (:class:`LLMConfig`), and the
client's fixed constants.

Only the *name* of the environment variable that holds the API key is part of the config, never
the key, so configs can be written into run directories and results safely.
"""
from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["LLMConfig"]

#: Sent as the bearer token when the endpoint needs no key (the SDK requires a non-empty one).
_PLACEHOLDER_KEY = "EMPTY"
#: HTTP statuses that are worth retrying besides 5xx.
_RETRY_STATUSES = {408, 409, 425, 429}
#: Upper bound on a server-requested ``Retry-After`` wait, in seconds.
_MAX_RETRY_AFTER_S = 60.0


class LLMConfig(BaseModel):
    """Where and how to reach an OpenAI-compatible chat endpoint.

    Only the *name* of the environment variable that holds the API key is part of the config,
    so configs can be written into run directories and results safely.
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str = "https://openrouter.ai/api/v1"
    model: str
    api_key_env: str = Field(
        "OPENROUTER_API_KEY",
        description='Name of the env var holding the key; "" for endpoints that need no key.',
    )
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, le=100)
    backoff_s: float = Field(1.0, ge=0)
    max_reasks: int = Field(2, ge=0, le=20)
    cache: bool = True
    cache_dir: Path | None = None
    price_in_per_mtok: float | None = Field(None, ge=0)
    price_out_per_mtok: float | None = Field(None, ge=0)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(
                f"base_url {v!r} is not an http(s) URL; use e.g. 'https://openrouter.ai/api/v1' "
                "or 'http://127.0.0.1:8000/v1'"
            )
        return v

    @field_validator("model")
    @classmethod
    def _check_model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model must name the model to query, e.g. 'openai/gpt-5-mini'")
        return v.strip()

    @field_validator("api_key_env")
    @classmethod
    def _check_key_env(cls, v: str) -> str:
        v = v.strip()
        if v and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(
                f"api_key_env must be the NAME of an environment variable (e.g. "
                f"'OPENROUTER_API_KEY'), not {'a key' if len(v) > 24 else repr(v)}"
            )
        return v
