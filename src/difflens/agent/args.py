"""Checking the arguments of the agent's tool calls: :class:`ToolError` (its message goes back to the
agent verbatim and names the valid choices) and :class:`Args`, the typed getters every tool's parser
uses. Shared by the ADL tools (:mod:`.tools`) and the other methods' free tools (:mod:`.views`)."""
from __future__ import annotations

from typing import Any, Sequence

__all__ = ["ToolError", "Args", "cut", "is_int", "fmt_list", "prob"]


class ToolError(Exception):
    """A tool call the agent got wrong: unknown tool, bad or missing arguments, unknown dataset,
    layer or position. The message is shown to the agent as is."""


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters; a cut text ends with an ellipsis."""
    return text if len(text) <= limit else text[:max(limit - 1, 0)].rstrip() + "…"


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def fmt_list(items: Sequence[Any]) -> str:
    return ", ".join(repr(i) if isinstance(i, str) else str(i) for i in items)


def prob(p: float) -> float:
    """A number rounded to 4 significant digits (probabilities, statistics)."""
    return float(f"{float(p):.4g}")


class Args:
    """The arguments of one call: typed getters that raise :class:`ToolError` with the tool's name."""

    def __init__(self, tool: str, args: Any, allowed: Sequence[str]):
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ToolError(f"the arguments of {tool} must be a JSON object with keys: {', '.join(allowed)}")
        extra = [k for k in args if k not in allowed]
        if extra:
            raise ToolError(f"unknown argument(s) for {tool}: {fmt_list(extra)}; "
                            f"allowed arguments: {', '.join(allowed)}")
        self.tool, self.raw = tool, args

    def get(self, key: str) -> Any:
        return self.raw.get(key)

    def integer(self, key: str, *, lo: int, hi: int, default: int | None = None) -> int:
        v = self.raw.get(key)
        if v is None:
            if default is None:
                raise ToolError(f"{self.tool} needs '{key}': an integer from {lo} to {hi}")
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not is_int(v):
            raise ToolError(f"'{key}' of {self.tool} must be an integer from {lo} to {hi}, got {v!r}")
        if not lo <= v <= hi:
            raise ToolError(f"'{key}' of {self.tool} must be from {lo} to {hi}, got {v}")
        return v

    def strings(self, key: str, *, most: int, required: bool = True) -> list[str] | None:
        v = self.raw.get(key)
        if v is None:
            if required:
                raise ToolError(f"{self.tool} needs '{key}': a list of 1 to {most} non-empty strings")
            return None
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v or not all(isinstance(s, str) and s.strip() for s in v):
            raise ToolError(f"'{key}' of {self.tool} must be a list of 1 to {most} non-empty strings")
        if len(v) > most:
            raise ToolError(f"'{key}' of {self.tool} has {len(v)} entries; at most {most} are allowed per call "
                            f"(split them over several calls)")
        return list(v)

    def choice(self, key: str, choices: Sequence[str], *, default: str | None = None) -> str:
        """One of ``choices`` (matched up to case and surrounding space); ``default`` when absent."""
        v = self.raw.get(key)
        if v is None:
            if default is None:
                raise ToolError(f"{self.tool} needs '{key}': one of {fmt_list(choices)}")
            return default
        if isinstance(v, str):
            if v in choices:
                return v
            folded = {c.casefold(): c for c in choices}
            if v.strip().casefold() in folded:
                return folded[v.strip().casefold()]
        raise ToolError(f"'{key}' of {self.tool} must be one of {fmt_list(choices)}, got {v!r}")

    def boolean(self, key: str, *, default: bool = False) -> bool:
        v = self.raw.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise ToolError(f"'{key}' of {self.tool} must be true or false, got {v!r}")
        return v
