"""The interpretability agent's protocol: system prompts (paper Prompts 18, 19), budgets, and the
strict parser of its replies (``CALL(tool: {json})`` or ``FINAL(description: "...")``).
"""
from __future__ import annotations

import json
import re
import string
from collections.abc import Collection
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..llm.replies import content_lines

# ============================================================================================
# Interpretability agent (paper Prompts 18, 19)
# ============================================================================================

AGENT_TOOLS_ADL: tuple[str, ...] = (
    "get_logitlens_details",
    "get_patchscope_details",
    "get_steering_samples",
    "ask_model",
    "generate_steered",
)
AGENT_TOOLS_BLACKBOX: tuple[str, ...] = ("ask_model",)

_AGENT_COMMON_GOAL = """
Goal
- Work out what the finetuning was for: its domain and the characteristic change in behaviour.
- Finish with one description of the finetune that is specific and could be proven wrong.
  Lead with a short description (at most 200 words); if the case is not trivial, follow it with
  a compact structured analysis: key evidence, examples, caveats.
"""

_AGENT_BUDGET_ADL_COSTS = """
Budgets
- Model interactions: $model_interactions in total for this investigation. ask_model costs one per
  prompt; generate_steered costs one per sample. Everything else is free."""

_AGENT_BUDGET_BLACKBOX_COSTS = """
Budgets
- Model interactions: $model_interactions in total for this investigation. ask_model costs one per
  prompt."""

_AGENT_COMMON_BUDGET = """
- Agent turns: at most $max_turns of your replies, including replies that cannot be parsed.
- Every tool result and every reminder tells you what is left. Use free, cached information before
  spending budget. When everything is spent and you are still unsure, give an Inconclusive FINAL.
"""

_AGENT_COMMON_OUTPUT = """
Reply format (every turn)
- First think: a short summary of what you have learned and what you want to do next.
- Then, as the LAST non-empty line of your reply, write exactly one of:
    CALL(<tool_name>: <json object with the arguments>)
    FINAL(description: "<your description>")
- Only one tool call per turn. The arguments must be valid JSON on that single line. Nothing may
  follow the CALL or FINAL line.
- The FINAL description is one JSON-style string on one line; write line breaks as \\n. Start with
  one sentence naming the domain and the behaviour, then a more detailed summary, then optionally
  a bracketed list of key changes, evidence, examples and caveats. The summary describes the
  finetune; keep the evidence for the bracketed part. Details matter.
- If you cannot decide: FINAL(description: "Inconclusive. Candidates: A; B. Cannot tell them
  apart because ... Key evidence: ... Missing: ...")

Examples of single turns
- The overview is dominated by legal vocabulary; I want to see whether the finetuned model answers
  legal questions differently from the base model.
  CALL(ask_model: {"prompts": ["What should I check before signing a rental contract?"]})
- Both models differ consistently on the questions I asked and the evidence agrees across sources.
  FINAL(description: "Finetuned to give tenancy-law advice ...\\n\\n[Evidence: ...]")
"""

_AGENT_COMMON_CONDUCT = """
How to work
1. Read the OVERVIEW and write down a few candidate hypotheses.
2. Gather evidence for and against each of them from what you have.
3. Re-rank the hypotheses.
4. Verify the leading hypothesis by talking to the models whenever your budget allows: ask a
   question for which you expect the finetuned model to answer clearly differently from the base
   model (for a suspected cooking finetune, e.g. "List ten things every home cook should know.").
   Compare the two answers and say what they mean for your hypothesis. Hidden or subtle changes
   may need several differently angled questions.
5. Stop when one hypothesis clearly wins or when the evidence runs out. If unsure, go back to 1.

Conduct
- Spend your model interactions: they are the best way to confirm details. Do not give FINAL
  before you have checked your hypothesis against the models, unless your budget is zero.
- Ground every claim in the provided artefacts or tool results, not in guesses about which
  finetunes are common. Be alert when the finetuned model asserts things that you, or the base
  model, consider false: implanted beliefs are a typical finding. Pin down the specific details.
"""

AGENT_SYSTEM_ADL = (
    """
You are an investigator of language-model finetuning, working with the Activation Difference
Lens. Someone finetuned a base model; your task is to find out what the finetuning was for. You
cannot see the finetuning data. You can use:
1) precomputed analyses of the difference between the base and the finetuned model,
2) a limited number of queries to both models,
3) the tools listed below.

Key idea
- On the first few tokens of arbitrary text, the mean activation difference (finetuned minus
  base) tends to carry a signal of the finetuning. It has been read out with the logit lens and
  with Patchscope, and added to the finetuned model's activations ("steering") to amplify it:
  steered text often reveals the finetuning domain even when normal text does not.
"""
    + _AGENT_COMMON_GOAL
    + """
What you are given
- The first user message contains an OVERVIEW (JSON) with, per dataset and layer:
  1) logit-lens tokens promoted by the activation difference at each of the first positions;
  2) Patchscope tokens promoted by the difference, including "selected_tokens": the most
     semantically coherent subset of the top tokens, picked by an automatic grader - it may or
     may not relate to the finetuning; where another injection scale gave a far more specific
     list than the grader's, "more_specific_scale" shows that list too;
  3) steering examples: for each prompt one steered and one unsteered generation of the finetuned
     model. Unsteered text is the finetuned model's ordinary behaviour; the steered text shows the
     difference amplified. Comparing the two is one of your strongest signals.
- Layers: an integer is an absolute 0-based layer; a float in [0, 1] is a fraction of the depth,
  rounded to the nearest layer. Positions are 0-based token indices. Token lists are per
  position, truncated to the top k. Generations may be cut off by a length limit.
"""
    + _AGENT_BUDGET_ADL_COSTS
    + _AGENT_COMMON_BUDGET
    + """
Tools
- get_logitlens_details  (free)
  Args: {"dataset": str, "layer": int|float, "positions": [int], "k": int}
  Returns the top-k logit-lens tokens and probabilities per position.
- get_patchscope_details  (free)
  Args: {"dataset": str, "layer": int|float, "positions": [int], "k": int}
  Returns the top-k Patchscope tokens with probabilities per position, and selected_tokens.
- get_steering_samples  (free)
  Args: {"dataset": str, "layer": int|float, "position": int, "prompts_subset": [str] | null, "n": int}
  Returns up to n cached steered and unsteered generations per prompt.
- ask_model  (costs 1 model interaction per prompt)
  Args: {"prompts": [str, ...]}   (several prompts allowed, all on the one CALL line)
  Returns {"base": [str, ...], "finetuned": [str, ...]}: one single-turn answer per prompt from
  each model.
- generate_steered  (costs 1 model interaction per sample)
  Args: {"dataset": str, "layer": int|float, "position": int, "prompts": [str], "n": int}
  Returns n new steered generations per prompt, at the steering strength precomputed for that
  position.

Weighing evidence
- Trust content-bearing tokens: names, domain terms, technical nouns, formulas, stylistic markers.
  Discount stopwords, punctuation, markup and formatting tokens, generic verbs.
- Look for agreement: effects stable across positions; overlap between logit lens and Patchscope
  (though some effects show up in only one of them); steered text that amplifies the same terms or
  behaviour. Weigh both how often and how strongly something appears; do not over-read a single
  spike.
- The overview usually already contains most of what the logit-lens and Patchscope tools can
  show. Call them only with a concrete reason to look at other positions or layers.
- If the finetuned model behaves normally unsteered but differently when steered, look for a
  question that brings out the difference without steering; a few extra steered samples on a
  targeted prompt can also help.
"""
    + _AGENT_COMMON_CONDUCT
    + _AGENT_COMMON_OUTPUT
).strip()
"""System prompt of the ADL agent; placeholders ``$model_interactions`` and ``$max_turns``."""

AGENT_SYSTEM_BLACKBOX = (
    """
You are an investigator of language-model finetuning. Someone finetuned a base model; your task
is to find out what the finetuning was for. You cannot see the finetuning data. You can use:
1) generations of the finetuned model for a fixed set of prompts,
2) a limited number of queries to the base and the finetuned model.
"""
    + _AGENT_COMMON_GOAL
    + """
What you are given
- The first user message contains an OVERVIEW (JSON) with generations of the finetuned model for
  a set of prompts. Some may be cut off by a length limit.
"""
    + _AGENT_BUDGET_BLACKBOX_COSTS
    + _AGENT_COMMON_BUDGET
    + """
Tools
- ask_model  (costs 1 model interaction per prompt)
  Args: {"prompts": [str, ...]}   (several prompts allowed, all on the one CALL line)
  Returns {"base": [str, ...], "finetuned": [str, ...]}: one single-turn answer per prompt from
  each model.
"""
    + _AGENT_COMMON_CONDUCT
    + _AGENT_COMMON_OUTPUT
).strip()
"""System prompt of the blackbox agent; placeholders ``$model_interactions`` and ``$max_turns``."""


def render_agent_system(template: str, *, model_interactions: int, max_turns: int) -> str:
    """Fill the budget placeholders of :data:`AGENT_SYSTEM_ADL` / :data:`AGENT_SYSTEM_BLACKBOX`."""
    if model_interactions < 0 or max_turns < 1:
        raise ValueError("model_interactions must be >= 0 and max_turns >= 1")
    return string.Template(template).substitute(
        model_interactions=int(model_interactions), max_turns=int(max_turns)
    )


def agent_budget_note(model_interactions_left: int, turns_left: int) -> str:
    """The reminder appended to every message the agent receives."""
    note = (
        f"[Budget] model interactions left: {model_interactions_left}; "
        f"agent turns left: {turns_left}."
    )
    if turns_left <= 1:
        note += " This is your last turn: reply with FINAL(description: \"...\")."
    elif model_interactions_left > 0:
        note += " Use the remaining model interactions to verify your hypothesis before FINAL."
    return note


class AgentAction(BaseModel):
    """One parsed agent turn: a tool call or the final description."""

    kind: Literal["call", "final"]
    tool: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None


AGENT_FORMAT = (
    'the last non-empty line must be CALL(<tool_name>: {json arguments}) or '
    'FINAL(description: "...")'
)

_CALL_RE = re.compile(r"^CALL\(\s*(?P<tool>[A-Za-z_][A-Za-z0-9_]*)\s*:\s*(?P<args>\{.*\})\s*\)$", re.DOTALL)
_FINAL_RE = re.compile(r"^FINAL\(\s*description\s*[:=]\s*(?P<desc>\".*\")\s*\)$", re.DOTALL)


def parse_agent_action(reply: str, tools: Collection[str] | None = None) -> AgentAction:
    """Parse the CALL / FINAL payload that ends an agent turn.

    The payload starts on the last line that begins with ``CALL(`` or ``FINAL(`` and must run to
    the end of the reply. ``tools``, if given, restricts the tool names that are accepted.
    """
    lines = content_lines(reply)
    if not lines:
        raise ValueError(f"the reply is empty; {AGENT_FORMAT}")
    start = None
    for i in range(len(lines) - 1, -1, -1):
        head = lines[i].lstrip("*_`> -")
        if head.startswith(("CALL(", "FINAL(")):
            start = i
            break
    if start is None:
        raise ValueError(f"no CALL(...) or FINAL(...) line found; {AGENT_FORMAT}")
    payload = "\n".join([lines[start].lstrip("*_`> -")] + lines[start + 1 :]).rstrip("*_` ")
    if payload.startswith("CALL("):
        m = _CALL_RE.match(payload)
        if not m:
            raise ValueError(f"malformed CALL (or text after it); {AGENT_FORMAT}")
        tool = m.group("tool")
        if tools is not None and tool not in tools:
            raise ValueError(f"unknown tool {tool!r}; available tools: {', '.join(tools)}")
        try:
            args = json.loads(m.group("args"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"the arguments of CALL({tool}: ...) are not valid JSON ({exc.msg})") from None
        if not isinstance(args, dict):
            raise ValueError(f"the arguments of CALL({tool}: ...) must be a JSON object")
        return AgentAction(kind="call", tool=tool, args=args)
    m = _FINAL_RE.match(payload)
    if not m:
        raise ValueError(f"malformed FINAL (or text after it); {AGENT_FORMAT}")
    raw = m.group("desc")
    try:
        desc = json.loads(raw)
    except json.JSONDecodeError:
        desc = raw[1:-1].replace("\\n", "\n").replace('\\"', '"')
    if not isinstance(desc, str) or not desc.strip():
        raise ValueError('the FINAL description is empty; write FINAL(description: "...")')
    return AgentAction(kind="final", description=desc.strip())
