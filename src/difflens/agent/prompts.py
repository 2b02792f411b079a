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


# ============================================================================================
# The agent with another diffing method's evidence (issue 20: the agent per method)
# ============================================================================================

AGENT_METHODS: tuple[str, ...] = ("adl", "mining", "kl", "amplify")
"""The diffing methods an agent can start from; ``all`` gives it every one the run has."""
AGENT_METHOD_CHOICES: tuple[str, ...] = AGENT_METHODS + ("all",)
EVIDENCE_TOOLS: dict[str, tuple[str, ...]] = {
    "adl": ("get_logitlens_details", "get_patchscope_details", "get_steering_samples"),
    "mining": ("more_tokens",),
    "kl": ("more_tokens", "top_contexts"),
    "amplify": ("amplified_samples",),
}
"""The free tools that page each method's evidence."""

_METHOD_NAMES = {"adl": "the Activation Difference Lens (ADL)", "mining": "diff mining",
                 "kl": "per-token KL divergence and activation differences",
                 "amplify": "logit-difference amplification"}


def agent_tools_for(method: str, parts: Collection[str] = ()) -> tuple[str, ...]:
    """The tools of an agent given ``method``'s evidence (``all``: the ``parts`` it has), in the order
    its prompt documents them: the methods' free tools, ``ask_model``, then ``generate_steered`` when
    ADL is among them."""
    if method == "adl":
        return AGENT_TOOLS_ADL
    if method not in AGENT_METHOD_CHOICES:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(AGENT_METHOD_CHOICES)}")
    chosen = [m for m in AGENT_METHODS if m in parts] if method == "all" else [method]
    free = [t for m in chosen for t in EVIDENCE_TOOLS[m]]
    out = list(dict.fromkeys(free)) + ["ask_model"]
    if "adl" in chosen:
        out.append("generate_steered")
    return tuple(out)


# -- what each method is, in a few lines (its "key idea") -----------------------------------------

_KEY = {
    "adl": """
- ADL: on the first few tokens of ordinary text, the mean activation difference (finetuned minus
  base) at a middle layer tends to carry a signal of the finetuning. It has been read out with the
  logit lens and with Patchscope, and added to the finetuned model's activations ("steering"):
  steered text often shows the finetuning domain even when normal text does not.""",
    "mining": """
- Diff mining: both models read many positions of ordinary text. At every position the
  finetuned model's next-token logits minus the base model's are taken, and for every token of
  the vocabulary it is counted how often the token is among the K largest differences. A token
  the finetune makes likelier across many unrelated contexts tends to name what it was trained on.""",
    "kl": """
- Per-token KL: both models read ordinary text, and at every token the KL divergence
  KL(P_ft || P_base) says how far the finetuned model's prediction of the next token departs from
  the base model's. The texts where it peaks show where the finetune changed the predictions most;
  the token after which the two predictions differ most is marked [[like this]]. At a middle
  layer the size (norm) and the cosine distance of the activation difference were recorded too.""",
    "amplify": """
- Logit-difference amplification: text is sampled from logits_ft + beta * (logits_ft - logits_base),
  i.e. at every step the finetuned model's logits are pushed further in the direction in which
  the finetune moved them. This exaggerates what the finetune changed, so its domain or behaviour
  often shows even on prompts that have nothing to do with it. beta is the largest value on a
  grid whose samples stayed coherent.""",
}

# -- what the OVERVIEW holds for each method, and what its baseline and control mean ---------------

_GIVEN = {
    "adl": """
- ADL section: per dataset and layer, the logit-lens and Patchscope tokens promoted by the
  activation difference at each of the first positions ("selected_tokens": the most coherent
  subset of the top tokens, picked by an automatic grader - it may or may not relate to the
  finetuning), and per prompt one steered and one unsteered generation of the finetuned model.
  Unsteered text is the finetuned model's ordinary behaviour; steered text shows the difference
  amplified. Positions are 0-based token indices; a layer given as a float in [0, 1] is a fraction
  of the depth.""",
    "mining": """
- Diff-mining section:
  "tokens": the method's ranking - the tokens most often among the top K of the logit
  difference, with "top_k_share" (share of all positions where the token is in the top K),
  "positive_share" (share of positions where its logit went up) and "mean_diff" (its mean logit
  difference).
  "baseline": the finetuned model's OWN top-K occurrence, without the base model. A token high in
  both lists is mostly a token the model predicts often anyway; one that ranks high for the
  difference but not in the baseline is specific to the finetune.
  "control": the same ranking for a control pair (the base model against a copy of itself with
  small random weight noise): what any small, aimless weight change promotes. Tokens that also
  top the control are not evidence of the objective.
  "specific": the method's tokens that appear in neither the baseline nor the control shown.
  "rankings": the rankings more_tokens can page (e.g. "positive", "mean_diff", "bottom_k": tokens
  the finetune makes LESS likely; names starting with "control_" are the control pair's).""",
    "kl": """
- KL section:
  "top_contexts": the texts whose largest per-token KL is highest, with the marked token and its
  value (nats).
  "tokens": the distinct marked tokens of the top contexts.
  "baseline": the tokens where the finetuned model ALONE is most uncertain (highest entropy of its
  next-token distribution). If the KL peaks are merely the uncertain spots, they say little
  about the finetune; peaks outside the baseline are specific to it.
  "control": the KL peaks of a control pair (the base model against a copy of itself with small
  random weight noise): what an aimless weight change looks like.
  "stats": mean and maximum over all tokens of kl, norm (size of the activation difference), cos
  (cosine distance) and ent (the baseline entropy); "control_stats" the same for the control
  pair. A KL far above the control's means the finetune changed the predictions substantially.
  "context_stats": the rankings top_contexts can page.""",
    "amplify": """
- Amplification section: per prompt, one "amplified" sample beside the finetuned model sampled
  normally ("finetuned", beta = 0: its ordinary behaviour - the baseline), the base model
  ("base", where present) and the same amplification on a control pair ("control": the base
  model against a copy with small random weight noise, amplified - what exaggerating an aimless
  change looks like). Themes that appear in the amplified text but neither in the finetuned nor
  in the control sample come from the finetune. "any_coherent": false means no beta kept the
  text coherent, so the amplified samples are just the finetuned model's. Texts may be cut.""",
}

# -- the free tools, documented ---------------------------------------------------------------------

_TOOL_DOCS = {
    "get_logitlens_details": """
- get_logitlens_details  (free)
  Args: {"dataset": str, "layer": int|float, "positions": [int], "k": int}
  Returns the top-k ADL logit-lens tokens and probabilities per position.""",
    "get_patchscope_details": """
- get_patchscope_details  (free)
  Args: {"dataset": str, "layer": int|float, "positions": [int], "k": int}
  Returns the top-k ADL Patchscope tokens with probabilities per position, and selected_tokens.""",
    "get_steering_samples": """
- get_steering_samples  (free)
  Args: {"dataset": str, "layer": int|float, "position": int, "prompts_subset": [str] | null, "n": int}
  Returns up to n cached steered and unsteered generations per prompt.""",
    "more_tokens": """
- more_tokens  (free)
  Args: {"method": str, "ranking": str, "offset": int, "n": int}
  Returns n further tokens of one token ranking, from the 0-based rank offset, with their
  statistics, the ranking's length and next_offset (null at the end). "method" ("mining" or
  "kl") may be left out when only one method has rankings; "ranking" defaults to the method's
  own (mining: "top_k"; kl: "kl_max", the marked tokens of the top contexts).""",
    "top_contexts": """
- top_contexts  (free)
  Args: {"stat": str, "offset": int, "n": int, "control": bool}
  Returns n texts ranked by a per-sample statistic ("kl_max" by default; also kl_mean, norm_max,
  norm_mean, cos_max, cos_mean, and the baseline ent_max / ent_mean), each with its marked token,
  the statistic's value and every statistic's value at the mark; "control": true reads the
  control pair's texts.""",
    "amplified_samples": """
- amplified_samples  (free)
  Args: {"offset": int, "n": int}
  Returns n amplified samples from the 0-based offset, each beside the finetuned, base and control
  samples for the same prompt and sample index, uncut; also the total and next_offset.""",
    "ask_model": """
- ask_model  (costs 1 model interaction per prompt)
  Args: {"prompts": [str, ...]}   (several prompts allowed, all on the one CALL line)
  Returns {"base": [str, ...], "finetuned": [str, ...]}: one single-turn answer per prompt from
  each model.""",
    "generate_steered": """
- generate_steered  (costs 1 model interaction per sample)
  Args: {"dataset": str, "layer": int|float, "position": int, "prompts": [str], "n": int}
  Returns n new ADL-steered generations per prompt, at the steering strength precomputed for that
  position.""",
}

# -- how to weigh each method's evidence -------------------------------------------------------------

_WEIGH = {
    "adl": """
- ADL: trust tokens that are stable across positions and shared by logit lens and Patchscope;
  compare steered with unsteered text for the same prompt. The overview usually holds most of
  what the ADL detail tools can show: call them with a concrete reason only.""",
    "mining": """
- Diff mining: a token counts when it ranks high for the difference AND is absent from the
  baseline and the control. Prefer a high positive_share (the token rises almost everywhere)
  over a high mean_diff alone (a few large spikes). Several word pieces of one word may appear
  separately; read them together. If the top is generic, "bottom_k" (what the finetune
  suppresses) or further ranks may be telling.""",
    "kl": """
- KL: read the contexts, not only the marked tokens: what do the high-KL texts have in common,
  and what would the finetuned model want to say next at the mark? Peaks that coincide with the
  entropy baseline, or that look like the control's, are weak evidence; compare the kl statistics
  with control_stats before trusting any of it.""",
    "amplify": """
- Amplification: compare each amplified sample with the finetuned sample for the same prompt;
  what recurs across unrelated prompts is the signal. Amplified text can degrade: repetition or
  gibberish is not evidence by itself, and what the control's amplified text also shows is not
  specific to the finetune.""",
}

_EVIDENCE_COMMON_WEIGH = """
Weighing evidence
- Trust content-bearing tokens: names, domain terms, technical nouns, formulas, stylistic markers.
  Discount stopwords, punctuation, markup and formatting tokens, generic verbs.
- Each method comes with a baseline (what one model alone gives) and a control (what a pair
  without a narrow finetune gives). Evidence counts when it stands out from both.
- Weigh both how often and how strongly something appears; do not over-read a single spike."""


def _intro(chosen: list[str]) -> str:
    if len(chosen) == 1:
        name = _METHOD_NAMES[chosen[0]]
        what = f"precomputed results of {name}, a method that compares the base and the finetuned model"
    else:
        what = ("precomputed results of several methods that compare the base and the finetuned model ("
                + "; ".join(_METHOD_NAMES[m] for m in chosen) + ")")
    return f"""
You are an investigator of language-model finetuning. Someone finetuned a base model; your task is
to find out what the finetuning was for. You cannot see the finetuning data. You can use:
1) {what},
2) a limited number of queries to both models,
3) the tools listed below.

Key idea{"s" if len(chosen) > 1 else ""}""" + "".join(_KEY[m] for m in chosen) + "\n"


def _given(chosen: list[str]) -> str:
    if len(chosen) == 1:
        head = ("- The first user message contains an OVERVIEW (JSON) of the method's results on one "
                "dataset of\n  ordinary text:")
    else:
        head = ("- The first user message contains an OVERVIEW (JSON) with one section per method under "
                "\"methods\",\n  each labelled with its method and title; \"not_computed\" names methods "
                "this run lacks:")
    return "\nWhat you are given\n" + head + "".join(_GIVEN[m] for m in chosen) + "\n"


def _budget(tools: tuple[str, ...]) -> str:
    paid = "ask_model costs one per\n  prompt" + ("; generate_steered costs one per sample" if "generate_steered"
                                                  in tools else "")
    return f"""
Budgets
- Model interactions: $model_interactions in total for this investigation. {paid}. Everything else is free."""


def agent_system_template(kind: str, method: str | None = "adl", parts: Collection[str] = ()) -> str:
    """The system prompt template of an agent: the paper's ADL and blackbox prompts unchanged for
    ``kind`` blackbox and ``method`` adl; for another method (or ``all`` with its ``parts``) a prompt
    of the same build that says what that method's evidence, baseline and control are, and which
    free tools page it. Placeholders ``$model_interactions`` and ``$max_turns``."""
    if kind == "blackbox":
        return AGENT_SYSTEM_BLACKBOX
    if method in (None, "adl"):
        return AGENT_SYSTEM_ADL
    chosen = [m for m in AGENT_METHODS if m in parts] if method == "all" else [method]
    if not chosen:
        raise ValueError("an agent over all methods needs at least one method with results")
    tools = agent_tools_for(method, chosen)
    text = (_intro(chosen) + _AGENT_COMMON_GOAL + _given(chosen) + _budget(tools) + _AGENT_COMMON_BUDGET
            + "\nTools" + "".join(_TOOL_DOCS[t] for t in tools) + "\n"
            + _EVIDENCE_COMMON_WEIGH + "".join(_WEIGH[m] for m in chosen)
            + ("\n- Agreement between methods is strong evidence; a finding of one method alone needs "
               "checking with\n  the models." if len(chosen) > 1 else "")
            + "\n- The overview shows the top of each list; page further with the free tools only "
              "with a reason.\n"
            + _AGENT_COMMON_CONDUCT + _AGENT_COMMON_OUTPUT)
    return text.strip()


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
