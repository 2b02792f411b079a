"""One agent episode (paper §3.1, App. C.4): the agent reads the overview, calls tools within its
budgets, and ends with a description of the finetuning objective.

Budgets: ``budget`` model interactions (``ask_model`` one per prompt, ``generate_steered`` one per
sample; the other tools are free) and at most ``max_turns`` agent replies, unparseable ones
included. Every message the agent receives ends with what is left. A call that would overspend is
refused without running; when interactions or turns run out, the agent is asked once more, for its
final answer only.

Protocols: ``native`` sends the tools as function specs and reads the reply's tool calls; ``text``
uses the paper's format (the last line is ``CALL(tool: {json})`` or ``FINAL(description: "…")``).
``auto`` (default) uses native where the provider supports it and falls back to text for the rest of
the episode if the endpoint rejects tool specs. A reply whose last line is ``FINAL(...)`` ends the
episode in either protocol.

Robustness: bad arguments, unknown tools and tool errors go back to the agent as messages; an
endpoint fault is retried by the LLM client; a fault that persists ends the episode with status
``error`` and everything so far kept. Agent misbehaviour never raises.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Literal

from ..errors import LLMError
from .prompts import (AGENT_FORMAT, AgentAction, agent_budget_note, agent_system_template, parse_agent_action,
                      render_agent_system)
from .providers import AgentProvider, ProviderReply
from .records import AgentMessage, Episode, ToolUse

__all__ = ["run_episode", "MAX_TURNS", "FINAL_REQUEST"]

MAX_TURNS = 15
RESULT_CHARS = 12_000  # a tool result longer than this is cut (the agent sees that it was)
FINAL_REQUEST = ('Your budget is used up. Reply now with your final answer: the last line must be '
                 'FINAL(description: "...").')


def _note(left: int, turns_left: int) -> str:
    note = agent_budget_note(left, turns_left)
    if left == 0 and turns_left > 1:
        note += " Model interactions are used up: free tools only, or give your FINAL answer."
    return note


def _result_text(result: Any) -> str:
    text = json.dumps(result, ensure_ascii=False)
    if len(text) > RESULT_CHARS:
        text = text[:RESULT_CHARS] + f" …[cut: {len(text) - RESULT_CHARS} more characters]"
    return text


def _action_from(reply: ProviderReply, tools: tuple[str, ...]) -> tuple[AgentAction, str | None]:
    """The agent's action and, for a native call, its call id. A FINAL line in the text wins."""
    if reply.text.strip():
        try:
            action = parse_agent_action(reply.text, tools)
            if action.kind == "final" or not reply.tool_calls:
                return action, None
        except ValueError:
            if not reply.tool_calls:
                raise
    if not reply.tool_calls:
        raise ValueError(f"the reply is empty; {AGENT_FORMAT}")
    call = reply.tool_calls[0]
    if call.name not in tools:
        raise ValueError(f"unknown tool {call.name!r}; available tools: {', '.join(tools)}")
    try:
        args = call.parsed_arguments()
    except ValueError as e:
        raise ValueError(f"the arguments of {call.name} are not valid JSON ({e})") from None
    if not isinstance(args, dict):
        raise ValueError(f"the arguments of {call.name} must be a JSON object")
    return AgentAction(kind="call", tool=call.name, args=args), call.id or f"call_{call.name}"


def _log(on: bool, msg: str) -> None:
    if on:
        print(f"[difflens] agent: {msg}", file=sys.stderr, flush=True)


def run_episode(provider: AgentProvider, toolbox: Any, *, kind: Literal["adl", "blackbox"], budget: int,
                max_turns: int = MAX_TURNS, protocol: Literal["auto", "native", "text"] = "auto",
                run_index: int = 0, progress: bool = False, method: str | None = None) -> Episode:
    """Run one episode; never raises on agent or endpoint misbehaviour (see the module doc).

    ``method``: the diffing method whose evidence the interpretability agent starts from (default:
    the toolbox's ``method``, else ``adl``); it picks the system prompt and is recorded."""
    if budget < 0 or max_turns < 1:
        raise ValueError("budget must be >= 0 and max_turns >= 1")
    native = protocol == "native" or (protocol == "auto" and provider.supports_tools)
    method = None if kind == "blackbox" else (method or getattr(toolbox, "method", None) or "adl")
    evidence = dict(getattr(toolbox, "evidence", None) or {})
    system = render_agent_system(agent_system_template(kind, method, evidence), model_interactions=budget,
                                 max_turns=max_turns)
    ep = Episode(kind=kind, budget=budget, max_turns=max_turns, protocol="native" if native else "text",
                 provider=provider.name, agent_model=provider.model, run_index=run_index, method=method,
                 evidence=evidence)
    salt_head = kind if method in (None, "adl") else method  # ADL's salts as before: cached replies still match
    overview = json.dumps(toolbox.overview(), ensure_ascii=False, indent=1)
    ep.messages = [AgentMessage(role="system", content=system),
                   AgentMessage(role="user", content=f"OVERVIEW\n{overview}\n\n{_note(budget, max_turns)}")]
    left = budget

    def ask(final_only: bool = False) -> ProviderReply | None:
        nonlocal native
        specs = toolbox.specs() if native and not final_only else None
        try:
            reply = provider.respond([m.for_api() for m in ep.messages], specs,
                                     salt=f"{salt_head}-{budget}-{run_index}-{len(ep.messages)}")
        except LLMError as e:
            if native and protocol == "auto" and ("400" in str(e) or "tool" in str(e).lower()):
                _log(progress, f"the endpoint rejected tool specs ({e}); switching to the text protocol")
                native = False
                ep.protocol = "text"
                return ask(final_only)
            ep.status, ep.error = "error", f"agent endpoint failed: {e}"
            return None
        except Exception as e:  # noqa: BLE001 - a crashing provider (e.g. a local model) ends the episode, kept
            ep.status, ep.error = "error", f"agent provider failed: {type(e).__name__}: {e}"
            return None
        ep.usage.requests += 1
        ep.usage.prompt_tokens += reply.usage.prompt_tokens
        ep.usage.completion_tokens += reply.usage.completion_tokens
        price = getattr(provider, "cost_usd", None)
        if callable(price):
            ep.usage.cost_usd = price(ep.usage.prompt_tokens, ep.usage.completion_tokens)
        calls = [{"id": c.id or f"call_{c.name}", "type": "function",
                  "function": {"name": c.name, "arguments": c.arguments}} for c in reply.tool_calls[:1]]
        ep.messages.append(AgentMessage(role="assistant", content=reply.text, tool_calls=calls or None))
        return reply

    while ep.turns_used < max_turns:
        reply = ask()
        if reply is None:
            return ep
        ep.turns_used += 1
        turns_left = max_turns - ep.turns_used
        try:
            action, call_id = _action_from(reply, toolbox.tools)
        except ValueError as e:
            ep.format_errors += 1
            _log(progress, f"turn {ep.turns_used}: unparseable reply ({e})")
            if ep.messages[-1].tool_calls:  # a native call we cannot honour still needs its answer
                ep.messages.append(AgentMessage(role="tool", tool_call_id=ep.messages[-1].tool_calls[0]["id"],
                                                content=f"ERROR: {e}"))
            hint = "" if AGENT_FORMAT in str(e) else f" Required: {AGENT_FORMAT}."
            ep.messages.append(AgentMessage(role="user", content=f"Format error: {e}.{hint}\n{_note(left, turns_left)}"))
            continue
        if action.kind == "final":
            ep.status, ep.final = "final", action.description
            _log(progress, f"turn {ep.turns_used}: FINAL")
            return ep
        tool, args = action.tool or "", action.args
        use = ToolUse(turn=ep.turns_used, tool=tool, args=args)
        try:
            cost = toolbox.cost(tool, args)
            if cost > left:
                raise _Refused(f"{tool} would cost {cost} model interaction(s) but only {left} are left; "
                               f"ask for fewer, use the free tools, or give your FINAL answer")
            result = toolbox.call(tool, args)
            text = _result_text(result)
            left -= cost
            use.cost, use.result_chars = cost, len(text)
            ep.interactions_used += cost
        except Exception as e:  # noqa: BLE001 - bad args, refusals and tool crashes go back to the agent
            ep.tool_errors += 1
            use.ok, use.error = False, f"{type(e).__name__}: {e}" if not isinstance(e, _Refused) else str(e)
            text = f"ERROR: {use.error}"
        ep.tool_uses.append(use)
        _log(progress, f"turn {ep.turns_used}: {tool} ({'ok' if use.ok else 'error'}, cost {use.cost}, "
                       f"{left} interactions left)")
        note = _note(left, turns_left)
        if call_id is not None:
            ep.messages.append(AgentMessage(role="tool", tool_call_id=call_id, content=text))
            ep.messages.append(AgentMessage(role="user", content=note))
        else:
            ep.messages.append(AgentMessage(role="user", content=f"RESULT of {tool}:\n{text}\n\n{note}"))
    # turns are used up without a FINAL: ask once more, for the final answer only
    ep.messages.append(AgentMessage(role="user", content=FINAL_REQUEST))
    reply = ask(final_only=True)
    if reply is None:
        return ep
    try:
        action, _ = _action_from(ProviderReply(reply.text), toolbox.tools)
        if action.kind == "final":
            ep.status, ep.final = "final", action.description
    except ValueError:
        ep.format_errors += 1
    return ep


class _Refused(Exception):
    """A call refused by the budget (not run)."""
