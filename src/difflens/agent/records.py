"""Typed records of agent episodes (paper §3.1, §4.1): what the agent saw and did, what it spent,
what it concluded and how that was graded. Saved under ``RUN/agent/`` through the run layout."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["AgentMessage", "ToolUse", "EpisodeUsage", "Episode", "SettingResult"]


class AgentMessage(BaseModel):
    """One chat message of the episode, as sent to or received from the agent model."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None  # native protocol: the assistant's calls
    tool_call_id: str | None = None  # native protocol: which call a tool message answers

    def for_api(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = self.tool_calls
        if self.tool_call_id:
            d["tool_call_id"] = self.tool_call_id
        return d


class ToolUse(BaseModel):
    turn: int
    tool: str
    args: dict[str, Any] = {}
    cost: int = 0  # model interactions spent (0 for free tools and refused calls)
    ok: bool = True
    error: str | None = None
    result_chars: int = 0


class EpisodeUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    requests: int = 0


class Episode(BaseModel):
    """One agent run: ``status`` is ``final`` (a description was given), ``no_final`` (budgets ran
    out without one, even after being asked) or ``error`` (the agent's endpoint failed; everything
    up to the failure is kept)."""

    kind: Literal["adl", "blackbox"]
    budget: int
    max_turns: int
    protocol: Literal["native", "text"]
    provider: str
    agent_model: str | None = None
    run_index: int = 0
    status: Literal["final", "no_final", "error"] = "no_final"
    final: str | None = None
    error: str | None = None
    turns_used: int = 0
    interactions_used: int = 0
    format_errors: int = 0
    tool_errors: int = 0
    messages: list[AgentMessage] = Field(default_factory=list)
    tool_uses: list[ToolUse] = Field(default_factory=list)
    usage: EpisodeUsage = Field(default_factory=EpisodeUsage)
    grades: list[int] = Field(default_factory=list)  # one per repeated grading
    grade: float | None = None  # their mean; an episode without a final description is graded 1
    grade_error: str | None = None


class SettingResult(BaseModel):
    """All runs of one setting (kind × budget) on one run directory."""

    kind: Literal["adl", "blackbox"]
    budget: int
    organism: str | None = None
    organism_type: str | None = None
    episodes: list[Episode] = Field(default_factory=list)
