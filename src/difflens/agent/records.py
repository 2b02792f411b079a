"""Typed records of agent episodes (paper §3.1, §4.1): what the agent saw and did, what it spent,
what it concluded and how that was graded. Saved under ``RUN/agent/`` through the run layout."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

__all__ = ["AgentMessage", "ToolUse", "EpisodeUsage", "Episode", "SettingResult", "setting_key", "setting_name",
           "parse_setting_key"]


def setting_name(kind: str, method: str | None = None) -> str:
    """What a setting's agent starts from: the diffing method (``adl`` when none is named) for the
    interpretability agent, ``blackbox`` for the blackbox agent."""
    return "blackbox" if kind == "blackbox" else (method or "adl")


def setting_key(kind: str, budget: int, method: str | None = None) -> str:
    """A setting's name in summaries, grids and paths: ``<method>-i<budget>`` (``adl-i5``,
    ``mining-i0``, ``all-i5``) or ``blackbox-i<budget>``."""
    return f"{setting_name(kind, method)}-i{int(budget)}"


def parse_setting_key(key: str) -> tuple[str, str | None, int]:
    """``(kind, method, budget)`` of a :func:`setting_key` (also of summaries written before methods
    were recorded: ``adl-i5`` is the ADL agent)."""
    name, sep, budget = key.rpartition("-i")
    if not sep or not budget.isdigit():
        raise ValueError(f"not an agent setting key: {key!r}")
    return ("blackbox", None, int(budget)) if name == "blackbox" else ("adl", name, int(budget))


def _default_method(data: Any) -> Any:
    """Records written before the method was recorded: an interpretability agent saw ADL."""
    if isinstance(data, dict) and data.get("method") is None and data.get("kind") == "adl":
        data = {**data, "method": "adl"}
    return data


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

    kind: Literal["adl", "blackbox"]  # adl: the interpretability agent, with the evidence of ``method``
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
    method: str | None = None  # the diffing method whose evidence the agent started from (None: blackbox)
    evidence: dict[str, str] = Field(default_factory=dict)  # method -> dataset its overview showed (not adl)

    _method = model_validator(mode="before")(_default_method)

    @property
    def setting(self) -> str:
        return setting_key(self.kind, self.budget, self.method)


class SettingResult(BaseModel):
    """All runs of one setting (kind × method × budget) on one run directory."""

    kind: Literal["adl", "blackbox"]
    budget: int
    organism: str | None = None
    organism_type: str | None = None
    episodes: list[Episode] = Field(default_factory=list)
    method: str | None = None  # see Episode.method

    _method = model_validator(mode="before")(_default_method)

    @property
    def setting(self) -> str:
        return setting_key(self.kind, self.budget, self.method)
